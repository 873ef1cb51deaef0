"""Model contracts: causality, init loss, learning, parameter and FLOP counts, config errors, KV cache."""
import math

import pytest
import torch

from conftest import OPTION_SETS, scrambled_model
from conftest import tiny_model as tiny
from fineweb_gpt.activation_checkpointing import apply_activation_checkpointing
from model import GPTConfig, KVCache, Rotary, count_params


@pytest.mark.parametrize("options", OPTION_SETS)
def test_attention_is_causal(options):
    model = scrambled_model(**OPTION_SETS[options])
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :10], b[:, :10])  # positions before t cannot see token t
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_at_init_is_near_uniform():
    model = tiny(vocab_size=50304)
    idx, targets = torch.randint(0, 50257, (2, 4, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50304)) < 0.1


def test_overfits_one_batch():
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 256, (4, 32))
    y = torch.roll(x, -1, 1)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize("options", [{"bias": False}, *OPTION_SETS.values()])
def test_param_count_breakdown_matches_the_parameters(options):
    model = tiny(**options)
    counts = model.num_params()
    assert counts == count_params(model.config)
    assert counts["total"] == counts["wte"] + counts["wpe"] + counts["lm_head"] + counts["value_embeds"] + counts["blocks"]
    assert counts["total"] == sum(p.numel() for p in set(model.parameters()))


def test_gpt2_small_is_124m():
    assert count_params(GPTConfig(vocab_size=50257))["total"] == 124_439_808  # OpenAI's GPT-2 small


def test_head_mismatch_names_nearest_valid_choices_with_sizes():
    with pytest.raises(ValueError) as e:
        GPTConfig(n_embd=512, n_head=12)
    msg = str(e.value)
    for option in ("n_embd=480 (", "n_embd=576 (", "n_head=8 (", "n_head=16 ("):
        assert option in msg
    assert "M params" in msg


def test_config_collects_every_problem():
    with pytest.raises(ValueError, match="n_layer must be in \\[1, inf\\), got 0.*\n.*dropout must be in"):
        GPTConfig(n_layer=0, dropout=1.5)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_kv_cache_chunks_match_full_forward(options):
    model = scrambled_model(**OPTION_SETS[options])
    idx = torch.randint(0, 256, (2, 20))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, 20, "cpu", torch.float32)
    parts = [model(idx[:, :7], cache=cache)[0], model(idx[:, 7:8], cache=cache)[0], model(idx[:, 8:], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"bias": False}, *OPTION_SETS.values()])
def test_flops_per_token_match_torchs_flop_counter(options):
    # one forward + backward, counted by torch; attention through the math kernel, which torch can count,
    # and the loss through the plain head (torch's counter does not see inside the chunked loss)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny(**options).train()
    model.set_chunked_loss(False)
    idx = torch.randint(0, 256, (3, 32))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    assert model.flops_per_token(32) * idx.numel() == counter.get_total_flops()


def test_init_weights_sets_every_parameter():
    model = tiny(n_layer=8)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.init_weights()
    named = dict(model.named_parameters())
    assert not any(p.isnan().any() for p in named.values())  # nothing is left to a module's default
    residual = 0.02 / math.sqrt(2 * 8)
    assert named["transformer.h.3.mlp.c_proj.weight"].std().item() == pytest.approx(residual, rel=0.1)
    assert named["transformer.h.3.mlp.c_fc.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(named["transformer.h.3.ln_1.weight"], torch.ones(32))



def test_rope_attention_scores_depend_only_on_relative_position():
    rotary = Rotary(GPTConfig(block_size=64, n_embd=32, n_head=2, pos_emb="rope"))
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)  # (B, nh, T, hs) each

    def score(m: int, n: int) -> float:
        return (rotary(q, m) * rotary(k, n)).sum().item()
    assert score(3, 1) == pytest.approx(score(40, 38), abs=1e-5)
    assert score(10, 10) == pytest.approx((q * k).sum().item(), abs=1e-5)  # relative position 0: no rotation
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_options_that_cannot_work_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="head size must be even"):
        GPTConfig(n_embd=36, n_head=4, pos_emb="rope")
    with pytest.raises(ValueError, match="mlp must be one of gelu, relu2, swiglu, got 'geglu'"):
        GPTConfig(mlp="geglu")
    with pytest.raises(ValueError, match=r"logit_softcap must be in \[0, inf\), got -1.0"):
        GPTConfig(logit_softcap=-1.0)


def test_untied_zero_initialised_head_predicts_uniform_at_init():
    model = tiny(**OPTION_SETS["modern"])
    idx = torch.randint(0, 256, (2, 16))
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(256), abs=1e-6)
    assert not model.lm_head.weight.any() and not model.transformer.h[0].mlp.c_proj.weight.any()
    assert model.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.1)


def test_swiglu_matches_the_gelu_mlp_in_size():
    gelu, swiglu = count_params(GPTConfig()), count_params(GPTConfig(mlp="swiglu"))
    assert abs(swiglu["blocks"] - gelu["blocks"]) / gelu["blocks"] < 0.01


def loss_and_grads(model, x, y):
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("options", OPTION_SETS)
def test_chunked_loss_equals_the_plain_loss_and_gradients(options):
    # the modern set has a logit softcap: the chunks apply it (SoftcappedLinearCrossEntropy)
    model = scrambled_model(**OPTION_SETS[options]).train()
    x, y = torch.randint(0, 256, (2, 4, 32))
    y[0, :5] = -1  # ignored positions
    model.set_chunked_loss(False)
    plain_loss, plain_grads = loss_and_grads(model, x, y)
    model.set_chunked_loss(True)
    chunked_loss, chunked_grads = loss_and_grads(model, x, y)
    torch.testing.assert_close(chunked_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("options", ["gpt2", "modern", "record"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(options):
    model = scrambled_model(**OPTION_SETS[options], dropout=0.1).train()
    x, y = torch.randint(0, 256, (2, 4, 32))
    torch.manual_seed(1)
    plain_loss, plain_grads = loss_and_grads(model, x, y)
    keys = list(model.state_dict())
    apply_activation_checkpointing(model)  # from outside the model, as train.py does
    assert list(model.state_dict()) == keys  # no wrapper module: checkpoints and exports keep their names
    torch.manual_seed(1)  # same dropout masks: the recomputation replays the saved RNG state
    ckpt_loss, ckpt_grads = loss_and_grads(model, x, y)
    assert torch.equal(ckpt_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
