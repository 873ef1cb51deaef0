"""Model contracts: causality, init loss, learning, parameter counts, config errors, KV cache, HF parity."""
import math

import pytest
import torch

from model import GPT, GPTConfig, KVCache, count_params, from_hf, generate, sample_next, to_hf_state_dict

TINY = dict(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=32)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw})).eval()


def test_attention_is_causal():
    model = tiny()
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


@pytest.mark.parametrize("bias", [True, False])
def test_param_count_breakdown_matches_the_parameters(bias):
    model = tiny(bias=bias)
    counts = model.num_params()
    assert counts == count_params(model.config)
    assert counts["total"] == counts["wte"] + counts["wpe"] + counts["blocks"]


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
    with pytest.raises(ValueError, match="n_layer must be positive.*\n.*dropout must be in"):
        GPTConfig(n_layer=0, dropout=1.5)


def test_kv_cache_chunks_match_full_forward():
    model = tiny()
    idx = torch.randint(0, 256, (2, 20))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, 20, "cpu", torch.float32)
    parts = [model(idx[:, :7], cache=cache)[0], model(idx[:, 7:8], cache=cache)[0], model(idx[:, 8:], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_greedy_with_cache_equals_without():
    model = tiny()
    idx = torch.randint(0, 256, (3, 5))
    with_cache = torch.cat(list(generate(model, idx, 25, temperature=0)), 1)
    without = torch.cat(list(generate(model, idx, 25, temperature=0, use_cache=False)), 1)
    assert torch.equal(with_cache, without)


def test_generation_stops_at_eot_and_pads_finished_rows():
    model = tiny()
    idx = torch.randint(0, 256, (2, 4))
    first = next(generate(model, idx, 1, temperature=0))
    eot = int(first[0, 0])
    out = torch.cat(list(generate(model, idx, 20, temperature=0, eot=eot)), 1)
    assert (out[0] == eot).all()  # row 0 hit eot at once and stays there


def test_generate_refuses_to_run_past_block_size():
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        list(generate(tiny(), torch.zeros(1, 30, dtype=torch.long), 5))


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    # probabilities ~ [0.71, 0.26, 0.013, ...]: top_p=0.9 keeps the first two only
    draws = {int(sample_next(logits, 1.0, top_p=0.9, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    assert {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)} == {0}
    assert int(sample_next(logits, 0.0)) == 0


def _tiny_hf():
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the GPT-2 parity tests")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_hf_gpt2_weights_load_with_identical_logits():
    hf = _tiny_hf()
    ours = from_hf(hf).eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_hf_state_dict_round_trips():
    hf = _tiny_hf()
    ours = from_hf(hf)
    sd = to_hf_state_dict(ours)
    hf_sd = hf.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, hf_sd[k]), k


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch's inductor
def test_compiled_decode_with_the_cache_matches_eager():
    # what sample.py --compile=True does on CUDA, here with inductor on CPU: one graph for the prompt and
    # one shared by all decode steps (the cache position is dynamic), the same greedy tokens as eager
    model = tiny()
    idx = torch.randint(0, 256, (2, 5))
    eager = torch.cat(list(generate(model, idx, 12, temperature=0)), 1)
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=True)
    assert torch.equal(torch.cat(list(generate(compiled, idx, 12, temperature=0)), 1), eager)
    assert counters["stats"]["unique_graphs"] == 2  # no recompilation as the cache fills
