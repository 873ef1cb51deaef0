"""The record line's model options (value embeddings, x0/residual lambdas, U-net skips): what each computes,
its initial values, its optimizer groups, and that generation, checkpointing and export handle it."""
import pytest
import torch

from conftest import OPTION_SETS, scrambled_model, tiny_model
from fineweb_gpt.generation import generate
from fineweb_gpt.hf_interop import hf_architecture
from fineweb_gpt.optimizer import OptimizerSettings, param_groups
from model import GPTConfig, KVCache, value_embed_table

# each option alone on a 4-layer model, and all of them on the modern recipe
OPTIONS = {"value_embeds": dict(value_embeds=2), "x0_lambdas": dict(x0_lambdas=True),
           "unet_skips": dict(unet_skips=True)}
ALL_ON = dict(OPTION_SETS["modern"], value_embeds=2, x0_lambdas=True, unet_skips=True)
NEW_PARAMS = ("value_embeds.", "value_mix.", "x0_mix.", "unet.")


def four_layers(**options):
    return tiny_model(n_layer=4, **options)


def test_value_embedding_tables_feed_the_first_and_last_layers():
    tables = lambda n, k: [value_embed_table(i, GPTConfig(n_layer=n, value_embeds=k)) for i in range(n)]  # noqa: E731
    assert tables(4, 2) == [0, 1, 0, 1]
    assert tables(12, 3) == [0, 1, 2, None, None, None, None, None, None, 0, 1, 2]
    assert tables(5, 1) == [0, None, None, None, 0]
    assert tables(4, 0) == [None] * 4
    with pytest.raises(ValueError, match="value_embeds=3 needs n_layer >= 6.*allows value_embeds <= 2"):
        GPTConfig(n_layer=4, value_embeds=3)


def test_options_off_add_no_parameters():
    assert not [n for n, _ in tiny_model().named_parameters() if n.startswith(NEW_PARAMS) or "value_mix" in n]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_the_output_and_its_parameters_learn(option):
    off, on = four_layers(), four_layers(**OPTIONS[option])
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert missing and not unexpected  # the same weights, plus the option's own
    idx = torch.randint(0, 256, (2, 16))
    assert not torch.allclose(on(idx)[0], off(idx)[0])
    on.train()
    on(idx, idx)[1].backward()
    for name in missing:
        grad = on.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_initial_values_are_the_references():
    model = tiny_model(n_layer=5, **ALL_ON)
    named = dict(model.named_parameters())
    for i in (0, 1, 3, 4):  # the layers with a value-embedding table
        assert torch.equal(named[f"transformer.h.{i}.attn.value_mix.lambdas"], torch.tensor([0.5, 0.5]))
    assert "transformer.h.2.attn.value_mix.lambdas" not in named
    assert named["value_embeds.tables.0.weight"].std().item() == pytest.approx(1.0, rel=0.1)
    torch.testing.assert_close(named["x0_mix.resid_lambdas"], torch.tensor([1.15, 1.125, 1.10, 1.075, 1.05]))
    torch.testing.assert_close(named["x0_mix.x0_lambdas"], torch.tensor([0.20, 0.1625, 0.125, 0.0875, 0.05]))
    assert torch.equal(named["unet.weights"], torch.ones(2))
    single = dict(tiny_model(n_layer=1, x0_lambdas=True).named_parameters())
    torch.testing.assert_close(single["x0_mix.resid_lambdas"], torch.tensor([1.15]))


def test_unet_skips_feed_the_first_halfs_outputs_in_reverse_order():
    model = four_layers(unet_skips=True)
    outputs = [torch.full((1, 1, 32), float(i)) for i in range(2)]
    with torch.no_grad():
        model.unet.weights.copy_(torch.tensor([10.0, 100.0]))
    x = torch.zeros(1, 1, 32)
    assert torch.equal(model.unet(x, outputs, 1), x)  # the first half receives nothing
    assert torch.equal(model.unet(x, outputs, 2), x + 10.0 * 1)  # block 2 <- block 1, the first weight
    assert torch.equal(model.unet(x, outputs, 3), x + 100.0 * 0)  # block 3 <- block 0


def test_x0_lambdas_start_each_block_from_the_normed_embedding():
    model = tiny_model(n_layer=2, x0_lambdas=True)
    with torch.no_grad():
        model.x0_mix.resid_lambdas.zero_()
        model.x0_mix.x0_lambdas.fill_(1.0)
    idx = torch.randint(0, 256, (1, 8))
    seen = []
    model.transformer.h[1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(idx)
    embedding = model.transformer.wpe(model.transformer.wte(idx), 0)
    expected = torch.nn.functional.rms_norm(embedding, (32,), eps=1e-6)
    torch.testing.assert_close(seen[0], expected)  # 0 * stream + 1 * x0
    assert seen[0].pow(2).mean(-1).sqrt().sub(1).abs().max() < 1e-2  # unit RMS (up to eps=1e-6)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_every_parameter_is_in_exactly_one_group_with_the_references_rates(name):
    model = four_layers(**ALL_ON)
    groups = param_groups(model, OptimizerSettings(name))
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    if name == "muon":
        by_name = {g["name"]: g for g in groups}
        embeddings = {id(p) for p in by_name["adamw: embeddings"]["params"]}
        assert {id(t.weight) for t in model.value_embeds.tables} <= embeddings
        assert by_name["adamw: x0 lambdas"]["params"] == [model.x0_mix.x0_lambdas]
        assert (by_name["adamw: x0 lambdas"]["lr"], by_name["adamw: x0 lambdas"]["betas"]) == (0.5, (0.96, 0.95))
        assert by_name["adamw: residual lambdas"]["params"] == [model.x0_mix.resid_lambdas]
        assert by_name["adamw: residual lambdas"]["weight_decay"] == 0.05
        scalars = {id(p) for p in by_name["adamw: norms and biases"]["params"]}
        assert id(model.unet.weights) in scalars and id(model.transformer.h[0].attn.value_mix.lambdas) in scalars


def test_cached_decoding_equals_the_full_forward_with_every_option():
    model = scrambled_model(n_layer=4, **ALL_ON)
    idx = torch.randint(0, 256, (2, 20))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, 20, "cpu", torch.float32)
    parts = [model(idx[:, :7], cache=cache)[0], model(idx[:, 7:8], cache=cache)[0], model(idx[:, 8:], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    prompt = idx[:, :5]
    with_cache = torch.cat(list(generate(model, prompt, 20, temperature=0)), 1)
    assert torch.equal(with_cache, torch.cat(list(generate(model, prompt, 20, temperature=0, use_cache=False)), 1))


@pytest.mark.parametrize("option", OPTIONS)
def test_export_to_gpt2_or_qwen3_refuses_the_options(option):
    assert hf_architecture(GPTConfig(**OPTION_SETS["qwen3"])) == "Qwen3ForCausalLM"
    with pytest.raises(ValueError, match=f"{option}=.*needs"):  # neither architecture computes it
        hf_architecture(GPTConfig(**OPTION_SETS["qwen3"], **OPTIONS[option]))


def test_nanochat_init_uses_nanochats_scales():
    model = tiny_model(n_embd=64, **dict(OPTION_SETS["modern"], init="nanochat"))
    named = dict(model.named_parameters())
    assert named["transformer.wte.weight"].std().item() == pytest.approx(0.8, rel=0.05)
    assert named["lm_head.weight"].std().item() == pytest.approx(0.001, rel=0.05)
    c_attn, c_fc = named["transformer.h.0.attn.c_attn.weight"], named["transformer.h.0.mlp.c_fc.weight"]
    assert c_attn.std().item() == pytest.approx(64 ** -0.5, rel=0.05)
    assert c_attn.abs().max().item() <= (3 / 64) ** 0.5  # uniform: bounded
    assert c_fc.std().item() == pytest.approx(0.4 * 64 ** -0.5, rel=0.05)
    assert not named["transformer.h.1.attn.c_proj.weight"].any() and not named["transformer.h.1.mlp.c_proj.weight"].any()
    with pytest.raises(ValueError, match="set tie_embeddings=False"):
        GPTConfig(init="nanochat")
