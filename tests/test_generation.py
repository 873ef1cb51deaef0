"""Generation: the cached decode loop equals recomputation, stops at EOT, respects top-k/top-p, compiles."""
import pytest
import torch

from conftest import OPTION_SETS, scrambled_model
from conftest import tiny_model as tiny
from fineweb_gpt.generation import generate, sample_next


@pytest.mark.parametrize("options", OPTION_SETS)
def test_greedy_with_cache_equals_without(options):
    model = scrambled_model(**OPTION_SETS[options])
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


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # raised inside torch's inductor
@pytest.mark.slow
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
