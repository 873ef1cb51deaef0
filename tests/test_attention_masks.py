"""Document-causal and sliding-window attention: the mask against an explicit one built with loops, FlexAttention
against the dense path, cached decoding against a full forward, the window schedule and compile (resume and DDP
with every option on: tests/test_train.py)."""
import pytest
import torch

import model as model_module
from conftest import run_train, scrambled_model
from fineweb_gpt.generation import generate
from fineweb_gpt.schedule import attn_window
from model import GPTConfig, KVCache, short_window_layers

EOT = 3
MASKED = dict(doc_causal=True, eot_token=EOT, attn_window=5, window_pattern="SL", pos_emb="rope", n_layer=3)


def loop_mask(idx: torch.Tensor, window: int, eot: int | None) -> torch.Tensor:
    """(B, T, T): query i sees key j iff j <= i, i - j < window, and no eot at positions j+1..i (an eot starts
    the document after it); written with loops, independently of model.py."""
    B, T = idx.shape
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(i + 1):
                crosses = eot is not None and any(int(idx[b, p]) == eot for p in range(j + 1, i + 1))
                mask[b, i, j] = i - j < window and not crosses
    return mask


def rows_with_documents(B: int = 2, T: int = 24) -> torch.Tensor:
    torch.manual_seed(1)
    idx = torch.randint(4, 64, (B, T))
    idx[0, [0, 7, 8, 15]] = EOT  # a row that starts with an eot, two eots in a row
    idx[1, [11]] = EOT           # a row that starts mid-document
    return idx


@pytest.mark.parametrize("doc_causal, window", [(True, 0), (False, 5), (True, 5)])
def test_the_mask_is_exactly_document_causal_and_windowed(doc_causal, window):
    config = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=16, doc_causal=doc_causal,
                       eot_token=EOT, attn_window=window)
    idx = rows_with_documents()
    masks = model_module.DocumentWindowMasks(config)(idx)
    eot = EOT if doc_causal else None
    for short, width in ((True, window or 32), (False, 32)):
        built = masks.dense(masks.q_pos, masks.q_doc, short)  # (B, 1, T, T)
        assert torch.equal(built[:, 0], loop_mask(idx, width, eot)), (short, width)


def test_window_pattern_repeats_and_the_last_layer_is_long():
    config = GPTConfig(n_layer=6, attn_window=128, window_pattern="SSL")
    assert short_window_layers(config) == [True, True, False, True, True, False]
    assert short_window_layers(GPTConfig(n_layer=3, window_pattern="SSL")) == [False] * 3  # no window: all long
    with pytest.raises(ValueError, match="window_pattern must be a string of S"):
        GPTConfig(window_pattern="SX")
    # a window at least as long as the context sees what full attention sees: a config's window of half its
    # context still builds when the context is shortened on the command line
    wide = scrambled_model(pos_emb="rope", attn_window=4096, window_pattern="SL")
    full = scrambled_model(pos_emb="rope")
    full.load_state_dict(wide.state_dict())
    idx = torch.randint(0, full.config.vocab_size, (2, full.config.block_size))
    torch.testing.assert_close(wide(idx)[0], full(idx)[0])  # the last position's logits
    torch.testing.assert_close(wide(idx, idx)[1], full(idx, idx)[1])  # every position, through the loss


@pytest.mark.slow  # compiles nothing, but runs the model through FlexAttention's eager reference
def test_flex_attention_forward_equals_the_dense_path(monkeypatch):
    # the CUDA path (block masks) on CPU, forward only (FlexAttention has no backward on CPU), uncompiled
    from torch.nn.attention.flex_attention import flex_attention
    model = scrambled_model(**MASKED)
    idx = rows_with_documents(T=30) % 256
    dense, _ = model(idx)
    monkeypatch.setattr(model_module.DocumentWindowMasks, "uses_flex", lambda self, idx: True)
    monkeypatch.setattr(model_module, "compiled_flex_attention", lambda: flex_attention)
    with torch.no_grad(), pytest.warns(UserWarning, match="flex_attention called without torch.compile"):
        flex, _ = model(idx)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_the_model_never_attends_across_a_document_or_beyond_its_window():
    # changing a token changes no output it may not see: the tokens of earlier documents, and (through the
    # layers' windows) nothing further back than the sum of the layers' reach
    model = scrambled_model(**{**MASKED, "attn_window": 4, "window_pattern": "S", "n_layer": 2})
    idx = torch.randint(4, 256, (1, 20))
    idx[0, 10] = EOT
    changed = idx.clone()
    changed[0, 2:10] = (changed[0, 2:10] + 1) % 256 + 4 * (changed[0, 2:10] < 4)
    out, _ = model(idx)
    out2, _ = model(changed)
    torch.testing.assert_close(out[0, 10:], out2[0, 10:])  # the second document never saw the first
    assert not torch.allclose(out[0, 9], out2[0, 9])


@pytest.mark.parametrize("options", [MASKED, {**MASKED, "pos_emb": "learned", "window_pattern": "S"},
                                     dict(attn_window=4, n_layer=2), dict(doc_causal=True, eot_token=EOT),
                                     {**MASKED, "attn_window": 100}],
                         ids=["docs+windows", "learned", "windows", "docs", "a window wider than the context"])
def test_cached_decoding_equals_a_full_forward(options):
    model = scrambled_model(**options)
    idx = rows_with_documents(T=26) % 256  # prompt of 9 tokens, longer than the window of 5
    full, _ = model(idx)
    cache = KVCache(model.config, 2, 26, "cpu", torch.float32)
    windowed = [layer.k.size(2) for layer, short in zip(cache.layers, short_window_layers(model.config)) if short]
    assert windowed and all(size == min(26, model.config.attn_window) for size in windowed) or not model.config.attn_window
    pieces = [model(idx[:, :9], cache=cache)[0], model(idx[:, 9:13], cache=cache)[0]]  # prefill, then a chunk
    pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(13, 26)]  # then one token at a time
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
    prompt = idx[:, :9]
    cached = torch.cat(list(generate(model, prompt, 15, temperature=0)), 1)
    assert torch.equal(cached, torch.cat(list(generate(model, prompt, 15, temperature=0, use_cache=False)), 1))


def test_cached_decoding_under_autocast_stays_close_to_the_full_forward():
    """The cache holds float32 keys and values while autocast computes them in bfloat16 (sample.py on a GPU)."""
    model = scrambled_model(**MASKED)
    idx = rows_with_documents(T=26) % 256
    with torch.autocast("cpu", torch.bfloat16):
        full, _ = model(idx)
        cache = KVCache(model.config, 2, 26, "cpu", torch.float32)
        pieces = [model(idx[:, :9], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(9, 26)]
        generated = list(generate(model, idx[:, :9], 15, temperature=0))
    assert len(generated) == 15
    # logits of a few units, computed in bfloat16 (8 significant bits) along two paths: a few hundredths apart
    torch.testing.assert_close(torch.cat(pieces, 1).float(), full.float(), rtol=0, atol=0.1)


def test_the_window_schedule_grows_linearly_then_stays():
    assert [attn_window(s, 1024, 128, 8) for s in (0, 1, 4, 8, 100)] == [128, 240, 576, 1024, 1024]
    assert attn_window(0, 256, 0, 0) == 256  # off: the full window from the start


def test_set_attn_window_changes_the_short_layers_only():
    model = scrambled_model(**MASKED)
    idx = rows_with_documents(T=30) % 256
    before, _ = model(idx)
    model.set_attn_window(2)
    after, _ = model(idx)
    assert not torch.allclose(before, after)
    assert "short_window" not in model.state_dict()  # derived from the config and the step: never saved
    model.set_attn_window(5)
    torch.testing.assert_close(model(idx)[0], before)


@pytest.mark.slow
def test_masked_training_compiles_to_one_graph_and_a_new_window_does_not_recompile():
    from torch._dynamo.testing import CompileCounter
    model = scrambled_model(**MASKED).train()
    idx = rows_with_documents(T=30) % 256
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda x, y: model(x, y)[1])(idx, idx)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    for window in (2, 3, 5):
        model.set_attn_window(window)
        compiled(idx, idx)[1].backward()
    assert counter.frame_count == 1
    # a sequence-length warmup's shorter rows of the same tokens: dynamo compiles again for a changed shape (with
    # dynamic sizes after the first change), never more than once per length, and traces the same loss
    for rows in (4, 2, 1):
        x = idx[:, :24].reshape(2 * rows, -1)
        loss = compiled(x, x)[1]
        torch.testing.assert_close(loss, model(x, x)[1], rtol=1e-5, atol=1e-5)
    assert counter.frame_count <= 1 + 3


@pytest.mark.parametrize("window, windows_set", [(0, []), (8, [2, 5, 8])], ids=["documents only", "window schedule"])
def test_training_sets_the_short_window_only_when_there_is_one(synthetic_shards, tmp_path, monkeypatch, window,
                                                               windows_set):
    from model import GPT
    calls = []
    monkeypatch.setattr(GPT, "set_attn_window", lambda self, w: calls.append(w))
    schedule = ["--window_warmup_iters=2", "--window_start=2"] if window else []
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--doc_causal=True", f"--eot_token={EOT}",
              f"--attn_window={window}", *schedule)
    assert calls == windows_set  # steps 0, 1 and the final eval at step 2


def test_a_checkpoint_inside_the_window_warmup_loads_with_the_window_its_val_loss_was_measured_with(
        synthetic_shards, tmp_path, capsys):
    import contextlib

    import train
    from conftest import metrics
    from fineweb_gpt.dataloader import ValSet
    from fineweb_gpt.distributed import Env
    from fineweb_gpt.inference import load_for_inference
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=2", "--attn_window=8",
              "--window_warmup_iters=4", "--window_start=2", "--pos_emb=rope")  # step 2: window 2 + 6 * 2/4 = 5
    logged = [r["val_loss"] for r in metrics(tmp_path) if r["step"] == 2 and "val_loss" in r]
    loaded = load_for_inference(str(tmp_path))
    assert loaded.model.config.attn_window == 5
    assert "the short window is 5 tokens (attn_window=8 once the warmup ends)" in capsys.readouterr().out
    val_set = ValSet(synthetic_shards, 4, 32, 2, "cpu")  # TINY's val batches
    assert train.evaluate(loaded.model, val_set, contextlib.nullcontext(), Env("cpu")) == pytest.approx(logged[0],
                                                                                                         abs=1e-6)


@pytest.mark.slow  # four training runs
def test_a_resume_keeps_the_checkpoints_windows_whatever_the_config_says(synthetic_shards, tmp_path):
    """The model of a resumed run is the checkpoint's: a window the old run lacked is neither trained nor saved."""
    from fineweb_gpt.inference import load_for_inference
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--pos_emb=rope")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["loop"]["attn_window"] = 3  # as an older version saved for such a resume
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert load_for_inference(str(tmp_path)).model.config.attn_window == 0  # an unwindowed model ignores it
    run_train(synthetic_shards, tmp_path, "--max_iters=4", "--pos_emb=rope", "--init_from=resume",
              "--attn_window=8", "--window_warmup_iters=4", "--window_start=2")
    assert load_for_inference(str(tmp_path)).model.config.attn_window == 0  # still the full context
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["loop"]["attn_window"] is None
    run_train(synthetic_shards, tmp_path / "windowed", "--max_iters=2", "--pos_emb=rope", "--attn_window=8")
    run_train(synthetic_shards, tmp_path / "windowed", "--max_iters=4", "--pos_emb=rope", "--init_from=resume",
              "--attn_window=16", "--window_warmup_iters=8", "--window_start=12")  # a start above the model's 8
    assert load_for_inference(str(tmp_path / "windowed")).model.config.attn_window == 8  # step 4 of 8: 8, not 14


def test_window_warmup_needs_a_start_within_the_window(synthetic_shards, tmp_path):
    from configurator import ConfigError
    with pytest.raises(ConfigError, match="window_warmup_iters=10 grows the short attention window"):
        run_train(synthetic_shards, tmp_path, "--window_warmup_iters=10", "--attn_window=8", "--window_start=0")


def test_activation_checkpointing_passes_the_masks_and_keeps_the_gradients():
    from fineweb_gpt.activation_checkpointing import apply_activation_checkpointing
    idx = rows_with_documents(T=30) % 256
    grads = []
    for checkpointed in (False, True):
        model = scrambled_model(**MASKED).train()
        if checkpointed:
            apply_activation_checkpointing(model)
        model(idx, idx)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])
