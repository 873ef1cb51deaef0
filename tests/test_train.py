"""The training loop on synthetic shards: learning, exact resume, accumulation, DDP, stopping, safety.

(The real-FineWeb pipeline end to end is tests/test_end_to_end.py.)"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fineweb_gpt import checkpoint
import train
from configurator import ConfigError, parse_config
from conftest import ROOT, TINY, losses, metrics, run_train
from fineweb_gpt.dataloader import ShardError
from fineweb_gpt.batch import BatchSchedule, resolve_batch
from fineweb_gpt.stop_signal import StopFlag
from model import GPT, GPTConfig

TIMING = ("elapsed", "tok_per_s", "peak_mem_gib")


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_loss_decreases_and_metrics_are_recorded(synthetic_shards, tmp_path):
    result = run_train(synthetic_shards, tmp_path, "--max_iters=60", "--eval_interval=30", "--learning_rate=1e-2")
    rows = metrics(tmp_path)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3  # step 0, 30 and after the last update
    assert vals[-1] < vals[0] - 1.5, vals
    assert result["step"] == 60 and len(losses(tmp_path)) == 60  # exactly max_iters updates
    row = rows[1]
    for field in ("step", "loss", "lr", "tokens", "elapsed", "grad_norm", "tok_per_s"):
        assert field in row
    assert row["tokens"] == row["step"] * 4 * 32 and row["mfu"] is None  # no made-up MFU on CPU
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["config"]["max_iters"] == 60 and saved["tokens_per_step"] == 128


MODERN = ["--optimizer=muon", "--lr_schedule=wsd", "--cooldown_frac=0.5", "--learning_rate=0.02", "--min_lr=0.002",
          "--pos_emb=rope", "--norm=rmsnorm", "--qk_norm=True", "--mlp=relu2", "--tie_embeddings=False",
          "--logit_softcap=15", "--zero_init_proj=True", "--bias=False"]


RECORD = [*MODERN, "--value_embeds=1", "--x0_lambdas=True", "--unet_skips=True"]  # the record line's model options
# every Muon variant on, the momentum warmup crossing the resume tests' stop at step 4 (or 2)
MUON_VARIANTS = ["--muon_momentum_warmup=6", "--muon_ns=polar_express", "--muon_normuon=True",
                 "--muon_cautious_wd=True"]


@pytest.mark.parametrize("recipe", [[], MODERN], ids=["adamw-cosine", "muon-wsd"])
def test_resume_continues_exactly(synthetic_shards, tmp_path, recipe):
    # dropout > 0 so the restored RNG state matters too
    common = ["--eval_interval=4", "--lr_decay_iters=8", "--dropout=0.1", *recipe]
    run_train(synthetic_shards, tmp_path / "whole", "--max_iters=8", *common)
    run_train(synthetic_shards, tmp_path / "split", "--max_iters=4", *common)
    run_train(synthetic_shards, tmp_path / "split", "--max_iters=8", "--init_from=resume", *common)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert sorted(losses(tmp_path / "whole")) == list(range(8))
    whole = torch.load(tmp_path / "whole" / "ckpt.pt", weights_only=True)["model"]
    split = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], split[k]) for k in whole)


@pytest.mark.slow
def test_muon_with_every_variant_learns(synthetic_shards, tmp_path, capsys, monkeypatch):
    from fineweb_gpt.muon import Muon
    momenta, momentum_updates = [], Muon.momentum_updates

    def recorded(self, params, group):
        momenta.append(group["momentum"])
        return momentum_updates(self, params, group)
    monkeypatch.setattr(Muon, "momentum_updates", recorded)
    run_train(synthetic_shards, tmp_path, "--max_iters=20", "--eval_interval=20", *MODERN, *MUON_VARIANTS)
    # the loop sets the momentum of each update: 0.85 rising to 0.95 over 6 steps (one call per stack of matrices)
    assert sorted(set(momenta)) == pytest.approx([0.85 + 0.1 * step / 6 for step in range(7)])
    vals = [r["val_loss"] for r in metrics(tmp_path) if "val_loss" in r]
    # measured: 10.83 at step 0, 6.06 at step 20, as without the variants
    assert vals[-1] < vals[0] - 3, vals
    assert "Muon (momentum 0.95 (from 0.85 over 6 steps), nesterov, Polar Express, NorMuon, cautious weight decay" \
        in capsys.readouterr().out


@pytest.mark.slow  # two training runs
def test_resume_from_an_older_checkpoint_replays_without_duplicate_metrics(synthetic_shards, tmp_path):
    # a run killed at step 6 after its step-4 checkpoint: resuming redoes steps 4 and 5 exactly
    common = ["--eval_interval=4", "--lr_decay_iters=8"]
    run_train(synthetic_shards, tmp_path / "whole", "--max_iters=8", *common)
    run_train(synthetic_shards, tmp_path / "cut", "--max_iters=4", *common)
    older = (tmp_path / "cut" / "ckpt.pt").read_bytes()
    run_train(synthetic_shards, tmp_path / "cut", "--max_iters=6", "--init_from=resume", *common)
    (tmp_path / "cut" / "ckpt.pt").write_bytes(older)
    run_train(synthetic_shards, tmp_path / "cut", "--max_iters=8", "--init_from=resume", *common)
    rows = metrics(tmp_path / "cut")
    assert [r["step"] for r in rows] == list(range(9))  # each step once, in order
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert untimed(rows) == untimed(metrics(tmp_path / "whole"))  # same losses, lrs, grad norms and val losses


def test_a_new_run_never_overwrites_an_existing_checkpoint(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=2")
    before = digest(tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="already holds a checkpoint .* --init_from=resume"):
        run_train(synthetic_shards, tmp_path, "--max_iters=2")
    assert digest(tmp_path / "ckpt.pt") == before


def test_a_muon_variant_changed_on_resume_is_refused(synthetic_shards, tmp_path):
    from configurator import ConfigError
    run_train(synthetic_shards, tmp_path, "--max_iters=1", "--eval_interval=1", *MODERN)
    with pytest.raises(ConfigError, match=r"Muon was built with --muon_normuon=False \(this run: True\)"):
        run_train(synthetic_shards, tmp_path, "--max_iters=2", "--init_from=resume", *MODERN, "--muon_normuon=True")


def test_resume_with_larger_max_iters_explains_the_schedule(synthetic_shards, tmp_path, capsys):
    run_train(synthetic_shards, tmp_path, "--max_iters=4", "--eval_interval=2")
    run_train(synthetic_shards, tmp_path, "--max_iters=8", "--eval_interval=2", "--init_from=resume")
    assert "the schedule changed (max_iters: 4 -> 8): lr at step 4 goes from" in capsys.readouterr().out
    assert sorted(losses(tmp_path)) == list(range(8))


def test_gradient_accumulation_equals_one_big_batch(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path / "accum", "--max_iters=4", "--batch_size=4", "--gradient_accumulation_steps=2")
    run_train(synthetic_shards, tmp_path / "big", "--max_iters=4", "--batch_size=8", "--gradient_accumulation_steps=1")
    a, b = losses(tmp_path / "accum"), losses(tmp_path / "big")
    assert a.keys() == b.keys()
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5)


def test_nan_loss_stops_the_run_and_keeps_the_good_checkpoint(synthetic_shards, tmp_path, monkeypatch):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=1")
    good = digest(tmp_path / "ckpt.pt")
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    with pytest.raises(train.TrainingError, match="loss is nan .* at step 3: training diverged"):
        run_train(synthetic_shards, tmp_path, "--max_iters=6", "--eval_interval=100", "--init_from=resume")
    assert digest(tmp_path / "ckpt.pt") == good


def test_batch_arithmetic_is_explained():
    cfg = parse_config(train.TrainConfig, ["--batch_size=8", "--block_size=1024", "--total_batch_size=524288"])
    assert resolve_batch(cfg, 1) == (64, 524288)
    assert resolve_batch(cfg, 8) == (8, 524288)
    with pytest.raises(ConfigError, match="64 micro-batches per update do not split over 3 processes"):
        resolve_batch(cfg, 3)
    odd = parse_config(train.TrainConfig, ["--batch_size=12", "--block_size=1024", "--total_batch_size=524288"])
    with pytest.raises(ConfigError, match="multiple of batch_size\\*block_size=12\\*1024=12288; use total_batch_size=516096 or "
                       "total_batch_size=528384 or batch_size=8 or batch_size=16"):
        resolve_batch(odd, 1)


def test_batch_schedule_rises_in_whole_micro_steps():
    batches = BatchSchedule(accum_steps=8, tokens_per_micro=100, warmup_iters=4, start_frac=0.25)
    assert [batches.accum_at(s) for s in range(7)] == [2, 4, 5, 7, 8, 8, 8]  # ceil(8 * (0.25 + 0.75 * s/4))
    assert batches.tokens_before(6) == (2 + 4 + 5 + 7 + 8 + 8) * 100 and batches.tokens_per_step == 800
    assert [BatchSchedule(3, 10, 2, 0.01).accum_at(s) for s in range(3)] == [1, 2, 3]  # never below one micro-step
    assert [BatchSchedule(8, 100).accum_at(s) for s in (0, 1000)] == [8, 8]  # off: the full batch throughout


@pytest.mark.slow  # two training runs
def test_a_sequence_length_warmup_trains_the_same_tokens_as_shorter_rows(synthetic_shards, tmp_path, monkeypatch):
    from fineweb_gpt.schedule import seq_len
    assert [seq_len(s, 2048, 512, 6) for s in (0, 2, 3, 5, 6, 100)] == [512, 512, 1024, 1024, 2048, 2048]
    assert seq_len(0, 2048, 0, 0) == 2048  # off
    seen, forward = [], GPT.forward

    def recorded_forward(self, idx, targets=None, **kwargs):
        if self.training:
            seen.append((idx, targets))
        return forward(self, idx, targets, **kwargs)
    monkeypatch.setattr(GPT, "forward", recorded_forward)
    run_train(synthetic_shards, tmp_path / "warmup", "--max_iters=5", "--seq_warmup_iters=4", "--seq_start=8")
    warmup, seen[:] = list(seen), []
    run_train(synthetic_shards, tmp_path / "off", "--max_iters=5")
    assert [tuple(x.shape) for x, _ in warmup] == [(16, 8), (16, 8), (8, 16), (8, 16), (4, 32)]  # batch_size=4 x 32
    for (x, y), (x_off, y_off) in zip(warmup, seen):  # the loader's rows (and their targets), cut
        assert torch.equal(x, x_off.reshape(x.shape)) and torch.equal(y, y_off.reshape(y.shape))
    assert all(r["step_tokens"] == 4 * 32 for r in metrics(tmp_path / "warmup") if "step_tokens" in r)


@pytest.mark.slow  # two training runs, traced by dynamo
def test_a_compiled_sequence_length_warmup_compiles_the_full_rows_anew_when_it_ends(synthetic_shards, tmp_path,
                                                                                   monkeypatch):
    from torch._dynamo.testing import CompileCounter
    counter, resets = CompileCounter(), []
    real_compile, real_reset = torch.compile, torch._dynamo.reset
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=counter))
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (resets.append(counter.frame_count), real_reset()))
    run_train(synthetic_shards, tmp_path / "compiled", "--max_iters=6", "--seq_warmup_iters=4", "--seq_start=8",
              "--compile=True")
    # once, after rows of 8 (static) and 16 (dynamic, which would serve 32 too), then the full rows static
    assert resets == [2] and counter.frame_count == 3
    run_train(synthetic_shards, tmp_path / "eager", "--max_iters=6", "--seq_warmup_iters=4", "--seq_start=8")
    compiled, eager = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    assert compiled.keys() == eager.keys() and all(compiled[s] == pytest.approx(eager[s], rel=1e-5) for s in eager)


def test_a_sequence_length_warmup_needs_a_power_of_two_below_block_size(synthetic_shards, tmp_path):
    from configurator import ConfigError
    with pytest.raises(ConfigError, match="seq_warmup_iters=4 doubles the row length from seq_start to "
                                          "block_size=32: set seq_start to block_size divided by a power of two"):
        run_train(synthetic_shards, tmp_path, "--seq_warmup_iters=4", "--seq_start=12")
    with pytest.raises(ConfigError, match="up to 64"):
        run_train(synthetic_shards, tmp_path, "--seq_warmup_iters=4", "--seq_start=1", "--block_size=128")


def doc_shards(tmp_path):
    """Shards of documents between end-of-text tokens, for doc_align (no tokenizer needed)."""
    from test_dataloader import make_doc_dir
    (tmp_path / "data").mkdir()
    return make_doc_dir(tmp_path / "data", longest=60)


# Every record-line option at once (on doc_shards): the model's, Muon's variants, rows opening at a document,
# document-causal attention, a short/long window growing over the first 6 steps and rows of 8, then 16, then 32
# tokens (a sequence-length warmup over the same 6); the warmups cross the resume test's stop at step 4 and last
# through the DDP test's 4 steps
EVERY_OPTION = [*RECORD, *MUON_VARIANTS, "--doc_align=bestfit", "--doc_causal=True", "--attn_window=8",
                "--window_pattern=SL", "--window_warmup_iters=6", "--window_start=2", "--seq_warmup_iters=6",
                "--seq_start=8"]


@pytest.mark.slow  # three training runs
def test_resume_with_every_record_option_and_a_batch_schedule_continues_exactly_and_counts_real_tokens(tmp_path):
    data = doc_shards(tmp_path)
    common = ["--eval_interval=4", "--lr_decay_iters=8", "--batch_size=2", "--gradient_accumulation_steps=4",
              "--batch_warmup_iters=4", "--batch_start_frac=0.25", "--dropout=0.1", *EVERY_OPTION]
    run_train(data, tmp_path / "whole", "--max_iters=8", *common)
    run_train(data, tmp_path / "split", "--max_iters=4", *common)
    run_train(data, tmp_path / "split", "--max_iters=8", "--init_from=resume", *common)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 8
    whole = torch.load(tmp_path / "whole" / "ckpt.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(whole["model"][k], split["model"][k]) for k in whole["model"])
    micro = 2 * 32  # tokens of one micro-step: 1, 2, 3, then 4 micro-steps per update
    expected = [0, 1, 3, 6, 10, 14, 18, 22, 26]
    for run in ("whole", "split"):
        assert [r["tokens"] for r in metrics(tmp_path / run)] == [n * micro for n in expected]
    assert split["loop"]["tokens"] == 26 * micro and split["loop"]["attn_window"] == 8  # grown by step 6


@pytest.mark.slow  # two training runs
def test_a_checkpoint_without_a_token_count_resumes_counting_full_updates(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["loop"]["tokens"]  # as saved before the count existed
    torch.save(ckpt, tmp_path / "ckpt.pt")
    run_train(synthetic_shards, tmp_path, "--max_iters=3", "--eval_interval=2", "--init_from=resume")
    assert [r["tokens"] for r in metrics(tmp_path) if r["step"] >= 2][-1] == 3 * 4 * 32


@pytest.mark.parametrize("option, named", [("--doc_align=crop", "doc_align=crop opens rows"),
                                           ("--doc_causal=True", "doc_causal=True separates documents")])
def test_documents_at_another_end_of_text_token_than_the_shards_is_explained(tmp_path, option, named):
    data = doc_shards(tmp_path)
    with open(os.path.join(data, "meta.json"), "w") as f:
        json.dump({"eot_id": 0}, f)
    with pytest.raises(ConfigError, match=f"{named} at eot_token=50256, but the shards' end-of-text token is 0 "
                                          f"\\(meta.json\\): set --eot_token=0"):
        run_train(data, tmp_path / "out", "--max_iters=1", option)


@pytest.fixture
def flex_fails_on_a_pretend_gpu(monkeypatch):
    """FlexAttention's probe fails, and train.check_flex_attention acts as on CUDA whatever device it is given;
    returns the list of the probe's calls."""
    probes = []

    def failing_probe(*args):
        probes.append(args)
        return "RuntimeError: out of shared memory", "Traceback (most recent call last):\nRuntimeError: out of shared memory"
    real_check = train.check_flex_attention
    monkeypatch.setattr(train, "flex_attention_error", failing_probe)
    monkeypatch.setattr(train.hardware, "device_name", lambda device: "a pretend GPU")
    monkeypatch.setattr(train, "check_flex_attention",
                        lambda model, dtype, device, say=print: real_check(model, dtype, "cuda", say))
    train.flex_attention_failure.cache_clear()
    monkeypatch.setattr(train, "_shown_flex_failures", set())
    yield probes
    train.flex_attention_failure.cache_clear()


MASKED_MODEL = dict(doc_causal=True, eot_token=0, attn_window=8)


def test_a_failing_flex_attention_probe_runs_once_and_every_masked_model_uses_dense_masks(
        flex_fails_on_a_pretend_gpu):
    said = []
    models = [GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, **MASKED_MODEL))
              for _ in range(2)]
    for model in models:
        train.check_flex_attention(model, "bfloat16", "cuda", said.append)
    assert len(flex_fails_on_a_pretend_gpu) == 1  # probed once per process
    assert [m.attn_masks.flex for m in models] == [False, False]
    assert len(said) == 2 and "FlexAttention does not run on a pretend GPU (RuntimeError: out of shared memory)" in said[0]
    assert said[0].endswith("What failed:\nTraceback (most recent call last):\nRuntimeError: out of shared memory")
    assert "What failed" not in said[1]  # the traceback once per process


def test_a_quiet_check_leaves_the_traceback_to_the_next_model(flex_fails_on_a_pretend_gpu):
    said = []  # depth=auto's trials check quietly; the chosen model's check must still show what failed
    for say in (None, said.append):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, **MASKED_MODEL))
        train.check_flex_attention(model, "bfloat16", "cuda", say)
        assert not model.attn_masks.flex
    assert len(said) == 1 and "What failed:\nTraceback" in said[0]


def test_the_flex_attention_probe_returns_the_failures_whole_traceback(monkeypatch):
    import model as model_module

    def broken_kernel():
        raise ValueError("a bug in our FlexAttention call")
    monkeypatch.setattr(model_module, "compiled_flex_attention", broken_kernel)
    summary, error = model_module.flex_attention_error("cpu", torch.float32, 2, 16)
    assert error.startswith("Traceback") and "in broken_kernel" in error
    assert error.strip().endswith("ValueError: a bug in our FlexAttention call")
    assert summary == "ValueError: a bug in our FlexAttention call"


def test_the_flex_attention_summary_is_the_messages_first_line_not_the_compilers_advice(monkeypatch):
    import model as model_module

    def failing_compile():  # as torch._dynamo's errors read: the message, then lines of advice
        raise RuntimeError("out of resource: shared memory, Required: 131072, Hardware limit: 101376\n\n"
                           "Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace")
    monkeypatch.setattr(model_module, "compiled_flex_attention", failing_compile)
    summary, error = model_module.flex_attention_error("cpu", torch.float32, 2, 16)
    assert summary == "RuntimeError: out of resource: shared memory, Required: 131072, Hardware limit: 101376"
    assert error.rstrip().endswith("Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace")

    def wrapped_failure():  # dynamo's BackendCompilerFailed: "backend='inductor' raised:", the real error inside
        from torch._dynamo.exc import BackendCompilerFailed
        raise BackendCompilerFailed("inductor", ValueError("out of resource: registers"), None)
    monkeypatch.setattr(model_module, "compiled_flex_attention", wrapped_failure)
    assert model_module.flex_attention_error("cpu", torch.float32, 2, 16)[0] == "ValueError: out of resource: registers"


def test_depth_auto_and_bench_train_their_masked_models_with_dense_masks_where_flex_fails(
        flex_fails_on_a_pretend_gpu, monkeypatch):
    import contextlib
    import bench
    from fineweb_gpt import plan
    from fineweb_gpt.distributed import Env
    from fineweb_gpt.runlog import Clock
    flex_in_forward = []
    forward = GPT.forward

    def recorded_forward(self, *args, **kwargs):
        flex_in_forward.append(self.attn_masks.flex)
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(GPT, "forward", recorded_forward)
    monkeypatch.setattr(bench, "check_flex_attention", train.check_flex_attention)
    bench.main([*TINY, "--doc_causal=True", "--eot_token=0", "--attn_window=8", "--warmup_steps=0", "--timed_steps=1"])
    assert flex_in_forward and not any(flex_in_forward)

    def one_forward(model, *args) -> float:
        model(torch.zeros(1, 8, dtype=torch.long))
        return 1.0  # token/s: depth 2 does not fit the budget, so depth=auto measures no other
    flex_in_forward.clear()
    monkeypatch.setattr(plan, "measure_tokens_per_s", one_forward)
    cfg = parse_config(train.TrainConfig, ["--device=cpu", "--time_budget=1h", "--lr_schedule=wsd", "--depth=auto",
                                           "--block_size=64", "--batch_size=2", "--vocab_size=512", "--compile=False",
                                           *(f"--{k}={v}" for k, v in MASKED_MODEL.items())])
    assert train.depth_by_speed(cfg, Env("cpu"), "float32", contextlib.nullcontext(), Clock(0.0)) == 2
    assert flex_in_forward == [False]


def test_a_batch_schedule_that_cannot_grow_is_explained(synthetic_shards, tmp_path):
    with pytest.raises(ConfigError, match="batch_warmup_iters=4 grows the batch through the accumulation count"):
        run_train(synthetic_shards, tmp_path, "--max_iters=2", "--batch_warmup_iters=4")


def test_data_too_small_for_block_size(synthetic_shards, tmp_path):
    with pytest.raises(ShardError, match="lower eval_iters"):
        run_train(synthetic_shards, tmp_path, "--eval_iters=100000")


def test_mfu_uses_the_peak_override(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--peak_tflops=1.0")
    row = metrics(tmp_path)[1]
    # the FLOPs of one training step (4 x 32 tokens, forward + backward) as torch's FlopCounterMode counts
    # them, with attention through the math kernel (the CPU flash kernel has no FLOP formula in torch)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    model.set_chunked_loss(False)  # the counter does not see inside the chunked loss
    x = torch.randint(0, 50257, (4, 32))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, x)[1].backward()
    steps_per_s = row["tok_per_s"] / 128
    assert row["mfu"] == pytest.approx(counter.get_total_flops() * steps_per_s / 1e12, rel=1e-9)


@pytest.mark.slow
def test_wandb_offline_run_is_written_and_resumed(synthetic_shards, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is in requirements.txt")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=1", "--wandb_log=True", "--wandb_run_name=t")
    run_id = torch.load(tmp_path / "ckpt.pt", weights_only=True)["loop"]["wandb_run_id"]
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith(run_id)
    assert any(f.endswith(".wandb") for f in os.listdir(tmp_path / "wandb" / runs[0]))
    run_train(synthetic_shards, tmp_path, "--max_iters=3", "--eval_interval=1", "--wandb_log=True", "--init_from=resume")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["loop"]["wandb_run_id"] == run_id


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def torchrun_cmd(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(ROOT, "train.py"), *TINY, "--backend=gloo", *args]


def torchrun(*args):
    return subprocess.run(torchrun_cmd(*args), capture_output=True, text=True, env=_env(), timeout=240)


@pytest.mark.slow
def test_ddp_with_every_record_option_matches_one_process(tmp_path):
    # gradients are all-reduced before the step, so every rank's Muon update (and the AdamW groups' beside it)
    # is the one process's update (NorMuon's statistics are kept on every rank), and the ranks' document-aligned
    # rows are the one process's micro-batches; GPT-2's AdamW recipe under DDP: test_multinode.py's two nodes
    data = doc_shards(tmp_path)
    args = ["--max_iters=4", "--eval_interval=2", "--gradient_accumulation_steps=2", *EVERY_OPTION]
    run_train(data, tmp_path / "single", *args)
    r = torchrun(f"--data_dir={data}", *args, f"--out_dir={tmp_path / 'ddp'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout and r.stdout.count(": val loss") == 3  # rank 0 prints, once per eval
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert single.keys() == ddp.keys() and len(single) == 4
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-5)
    vals = lambda out: [r["val_loss"] for r in metrics(out) if "val_loss" in r]  # noqa: E731
    assert vals(tmp_path / "ddp") == pytest.approx(vals(tmp_path / "single"), rel=1e-5)
    keys = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)["model"]
    assert not [k for k in keys if k.startswith("module.")]


@pytest.mark.slow
def test_a_user_error_under_torchrun_is_printed_once(synthetic_shards, tmp_path):
    # raised by both ranks after the process group is up (the batch does not split): each rank tears the
    # group down and exits, and one of them says why
    r = torchrun(f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--total_batch_size=100")
    assert r.returncode != 0
    assert (r.stdout + r.stderr).count("train.py: error: total_batch_size=100 is not a multiple") == 1, r.stderr[-3000:]

@pytest.mark.slow
def test_ddp_resume_with_dropout_continues_exactly(synthetic_shards, tmp_path):
    # each rank draws its own dropout masks: every rank's RNG state must come back
    common = [f"--data_dir={synthetic_shards}", "--eval_interval=3", "--lr_decay_iters=6", "--dropout=0.1",
              "--gradient_accumulation_steps=2"]
    for out, extra in (("whole", ["--max_iters=6"]), ("split", ["--max_iters=3"]),
                       ("split", ["--max_iters=6", "--init_from=resume"])):
        r = torchrun(*common, f"--out_dir={tmp_path / out}", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert len(torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["rng"]) == 2


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_and_exits(synthetic_shards, tmp_path):
    # Ctrl-C reaches torchrun's process group; torchrun forwards it to the workers, which stop together
    cmd = torchrun_cmd(f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--max_iters=100000", "--eval_interval=100000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((tmp_path / "metrics.jsonl").exists() and len(metrics(tmp_path)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "SIGINT received" in out and "continue with --init_from=resume" in out, err[-3000:]
    assert "KeyboardInterrupt" not in err
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["loop"]["step"] == max(losses(tmp_path)) + 1 and len(ckpt["rng"]) == 2


@pytest.mark.slow
def test_sigint_finishes_the_step_saves_and_resumes(synthetic_shards, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}",
           "--max_iters=100000", "--eval_interval=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 120
    while time.time() < deadline:
        if (tmp_path / "metrics.jsonl").exists() and len(metrics(tmp_path)) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGINT received" in out and "continue with --init_from=resume" in out
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    stopped = ckpt["loop"]["step"]
    assert stopped == max(losses(tmp_path)) + 1  # the step in flight was finished, then saved
    run_train(synthetic_shards, tmp_path, f"--max_iters={stopped + 2}", "--eval_interval=100000", "--init_from=resume")
    assert max(losses(tmp_path)) == stopped + 1


def test_a_repeated_stop_signal_is_one_request_and_a_later_one_aborts():
    stop = StopFlag()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the same request forwarded by a launcher
            time.sleep(0.05)
        except KeyboardInterrupt:
            pytest.fail("a repeat of the same stop request aborted the run")
        assert stop.signal == "SIGINT"
        stop.first_at -= StopFlag.DUPLICATE_WINDOW_S  # seconds later: a real second Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        stop.restore()


def test_an_unwritable_out_dir_is_a_message(synthetic_shards, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="train.py: error: --out_dir=.*a_file is a file; name a folder"):
        train.main([*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={blocker}", "--max_iters=1"])
    with pytest.raises(SystemExit, match=r"train.py: error: cannot write into --out_dir=.*a_file/sub \(creating the "
                                         r"folder failed: Not a directory \(ENOTDIR\)\)"):
        train.main([*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={blocker}/sub", "--max_iters=1"])
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_a_compile_failure_says_to_run_eager(synthetic_shards, tmp_path, monkeypatch):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("Compiler: cc is not found")  # what inductor meets on a machine with no C compiler

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=broken_backend))
    with pytest.raises(SystemExit, match="torch.compile could not build the model .* --compile=False"):
        train.main([*TINY, "--compile=True", f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--max_iters=1"])


@pytest.mark.slow
def test_compiled_modern_recipe_trains_like_eager(synthetic_shards, tmp_path):
    # torch.compile covers the blocks; the chunked loss (no softcap) and Muon's step run eagerly beside the
    # graph
    args = ["--max_iters=3", "--eval_interval=3", *MODERN, "--logit_softcap=0"]
    run_train(synthetic_shards, tmp_path / "eager", *args)
    run_train(synthetic_shards, tmp_path / "compiled", *args, "--compile=True")
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-4)
