"""scripts/gpu_check.py: refuses to run without a GPU; its whole pipeline (prepare, train with batch_size=auto,
sample, export, load in transformers, the table) runs on CPU at a tiny size."""
import os

import pytest

from conftest import load_script

gpu_check = load_script("scripts/gpu_check.py")


def test_without_a_gpu_it_says_so_and_exits_non_zero(monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check.hardware, "unseen_gpu", lambda: None)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main([])
    assert "no GPU to check" in str(exit_.value.code)


def test_a_graph_break_or_a_loss_that_does_not_fall_fails_the_check():
    good = {"config": "a", "graph_breaks": 0, "first_loss": 10.8, "last_loss": 9.1}
    assert gpu_check.problems([good], compiled=True) == []
    assert "graph break" in gpu_check.problems([{**good, "graph_breaks": 2}], compiled=True)[0]
    assert "loss went from" in gpu_check.problems([{**good, "last_loss": float("nan")}], compiled=True)[0]
    assert "loss went from" in gpu_check.problems([{**good, "last_loss": 11.0}], compiled=True)[0]


@pytest.mark.slow
def test_the_pipeline_runs_on_cpu_and_prints_the_table(parquet_files, tiktoken_cache, tmp_path, capsys):
    inputs = ",".join(parquet_files[:4])
    code = gpu_check.run(gpu_check.GPUCheckConfig(
        input=inputs, max_docs=400, work_dir=str(tmp_path), configs="config/train_fineweb.py", max_iters=6,
        total_batch_size=256, device="cpu", compile=False,
        train_args="--n_layer=2 --value_embeds=1 --n_head=2 --n_embd=32 --block_size=32 --val_batch_size=4 --warmup_iters=1"))
    assert code == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| cpu | train_fineweb |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "8" and cells[-1] == "FinewebGPTForCausalLM"  # auto micro-batch on CPU; the export loaded
    assert float(cells[9]) < float(cells[8])  # the loss fell
    assert open(os.path.join(tmp_path, "gpu_check.md")).read().strip() in printed
