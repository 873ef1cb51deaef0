"""float16 with the GradScaler (what GPUs before Ampere get) trains, on CPU here; a run resumes in another
dtype with a message, never the GradScaler's RuntimeError."""
import math
import os

import pytest
import torch

from conftest import losses, run_train

MODERN = ["--pos_emb=rope", "--norm=rmsnorm", "--qk_norm=True", "--mlp=swiglu", "--tie_embeddings=False",
          "--bias=False", "--optimizer=muon", "--learning_rate=0.02", "--muon_ns_dtype=float32"]


def test_float16_with_grad_scaler_trains_the_muon_recipe(synthetic_shards, tmp_path, capsys):
    # torch's CPU autocast runs float16 and GradScaler("cpu") exists, so the fp16 path runs here as on a T4
    out = str(tmp_path / "fp16")
    summary = run_train(synthetic_shards, out, *MODERN, "--dtype=float16", "--max_iters=6", "--eval_interval=6")
    steps = losses(out)
    assert len(steps) == 6 and all(math.isfinite(v) for v in steps.values())
    assert steps[5] < steps[0]  # it learns: chunked loss in fp16 with fp32 accumulation, Muon's update in fp32
    assert math.isfinite(summary["val_loss"])
    scaler = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["scaler"]
    assert scaler and scaler["scale"] > 0  # the GradScaler ran: an fp32 or bf16 run saves an empty state


@pytest.mark.parametrize("first, second", [("bfloat16", "float16"),
                                           pytest.param("float16", "float32", marks=pytest.mark.slow),
                                           pytest.param("float16", "bfloat16", marks=pytest.mark.slow)])
def test_resume_in_another_dtype(synthetic_shards, tmp_path, capsys, first, second):
    out = str(tmp_path / "run")
    run_train(synthetic_shards, out, f"--dtype={first}", "--max_iters=2", "--eval_interval=2")
    summary = run_train(synthetic_shards, out, f"--dtype={second}", "--max_iters=4", "--eval_interval=2",
                        "--init_from=resume")
    assert summary["step"] == 4 and math.isfinite(summary["loss"])
    printed = capsys.readouterr().out
    assert f"this run in {second}" in printed
    assert ("the loss scale starts afresh" if second == "float16" else "no loss scale needed") in printed


def test_bf16_sampling_keeps_rmsnorm_on_its_fused_kernel(synthetic_shards, tiktoken_cache, tmp_path, capsys):
    import io
    import warnings

    import sample
    from configurator import parse_config
    out = str(tmp_path / "modern")
    run_train(synthetic_shards, out, *MODERN, "--max_iters=1", "--eval_interval=1")
    cfg = parse_config(sample.SampleConfig, [f"--out_dir={out}", "--device=cpu", "--dtype=bfloat16",
                                             "--num_samples=1", "--max_new_tokens=3"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = sample.sample(cfg, out=io.StringIO())
    assert len(texts) == 1
    # torch warns when an fp32 input meets a bf16 gain: "Cannot dispatch to fused implementation"
    assert not [w for w in caught if "fused implementation" in str(w.message)]
