"""The README's commands as a user types them: prepare.py -> train.py -> sample.py -> export.py on real FineWeb text."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import PARQUET_DIR, ROOT


def run(*args, env):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_prepare_train_sample_export_from_the_command_line(tiktoken_cache, parquet_files, tmp_path):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": tiktoken_cache, "OMP_NUM_THREADS": "2"}
    data, out = tmp_path / "data", tmp_path / "out-tiny"
    r = run("data/fineweb/prepare.py", f"--input={PARQUET_DIR}/batch_00000[1-3].parquet", f"--out_dir={data}",
            "--val_tokens=20000", env=env)
    assert "done: 300 documents" in r.stdout
    # the tiny config at half its width: Muon's bf16 step is slow on CPUs without bf16 hardware
    r = run("train.py", "config/train_tiny.py", f"--data_dir={data}", f"--out_dir={out}", "--max_iters=20",
            "--eval_interval=10", "--eval_iters=4", "--n_embd=64", "--n_head=2", env=env)
    vals = [json.loads(line)["val_loss"] for line in open(out / "metrics.jsonl") if "val_loss" in line]
    assert len(vals) == 3 and vals[-1] < vals[0] - 1.0, vals  # it learned something from the text
    assert "n_layer=4" in r.stdout and "saved ckpt.pt" in r.stdout  # the config file was applied
    assert "run finished: 20 steps, 20,480 tokens" in r.stdout
    next_commands = {shlex.split(c)[1]: shlex.split(c)[2:] for c in r.stdout.split("\nnext:\n", 1)[1].splitlines()
                     if c.startswith("  python ")}
    assert set(next_commands) == {"sample.py", "plot.py", "export.py"}
    r = run("sample.py", f"--out_dir={out}", "--num_samples=2", "--max_new_tokens=30", "--start=The court held",
            env=env)
    assert r.stdout.count("The court held") == 2 and len(r.stdout) > 2 * len("The court held") + 40
    run("plot.py", *next_commands["plot.py"], env=env)  # the summary's commands, pasted
    assert (out / "loss.png").exists()
    run("export.py", *next_commands["export.py"], env=env)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "hf-tiny"))
