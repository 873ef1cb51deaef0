"""Model contracts: causality, init loss, learning, parameter and FLOP counts, config errors, KV cache."""
import math

import pytest
import torch

from conftest import tiny_model as tiny
from model import GPTConfig, KVCache, count_params


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


@pytest.mark.parametrize("bias", [True, False])
def test_flops_per_token_match_torchs_flop_counter(bias):
    # one forward + backward, counted by torch; attention through the math kernel, which torch can count
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny(bias=bias).train()
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

