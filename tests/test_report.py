"""What the scripts print for people: changed settings, start-up lines, the end-of-run summary."""
import os
import shlex
from dataclasses import dataclass

from configurator import key, parse_config
from fineweb_gpt.report import (RunSummary, changes, choice_reason, config_lines, count, device_line, export_dir,
                                param_group_line, plural, run_summary)


def test_changes_name_each_differing_key_with_old_and_new_value():
    old = {"shard_size": 100, "prefix": "fineweb", "val_docs": 5}
    new = {"shard_size": 60, "prefix": "fineweb", "val_docs": 5, "max_docs": 0}
    assert changes(old, new) == ["shard_size: 100 -> 60", "max_docs: (not set) -> 0"]
    assert changes(old, new, keys=["prefix", "val_docs"]) == []
    assert changes({"lr_schedule": "cosine"}, {"lr_schedule": "wsd"}) == ["lr_schedule: 'cosine' -> 'wsd'"]


def test_plural_forms_and_units():
    assert [plural(1, "tensor"), plural(17, "tensor"), plural(2, "process", "processes")] == \
        ["1 tensor", "17 tensors", "2 processes"]
    assert [count(6_443_520), count(2_304), count(0), count(1.2e9)] == ["6.44M", "2,304", "0", "1.20B"]
    assert param_group_line("adamw: norms and biases", 2304, 17, "AdamW") == \
        "adamw: norms and biases: 2,304 params in 17 tensors, AdamW"
    assert param_group_line("adamw: output head", 6_443_520, 1, "AdamW").startswith(
        "adamw: output head: 6.44M params in 1 tensor,")


@dataclass
class Cfg:
    out_dir: str = key("out", "where")
    max_iters: int = key(5000, "steps")
    compile: bool | None = key(None, "compile")


def test_start_up_config_shows_only_what_differs_from_the_defaults():
    text = config_lines(parse_config(Cfg, ["--out_dir=out-tiny", "--compile"]), "out-tiny/config.json")
    assert text.splitlines() == ["config: 2 keys differ from the defaults (every key: out-tiny/config.json)",
                                 "  out_dir='out-tiny', compile=True"]
    many = config_lines(parse_config(Cfg, [f"--out_dir={'x' * 60}", "--max_iters=7", "--compile"]), "c", width=50)
    assert many.splitlines()[1:] == [f"  out_dir='{'x' * 60}',", "  max_iters=7, compile=True"]  # whole keys per line
    assert config_lines(Cfg(), "out/config.json") == "config: all defaults (every key: out/config.json)"


def test_device_and_dtype_on_one_line_without_repeats():
    line = device_line("cpu", "cpu", "no GPU found", "float32", choice_reason("as requested", is_default=True))
    assert line == "device: cpu, no GPU found | dtype: float32, the default"
    assert "\n" not in line and "cpu (cpu" not in line
    assert choice_reason("as requested", is_default=False) == "as requested"
    gpu = device_line("cuda", "NVIDIA GeForce RTX 4070", "CUDA GPU found", "bfloat16", "GPU supports bf16", 2)
    assert gpu == ("device: cuda (NVIDIA GeForce RTX 4070), CUDA GPU found, 2 processes | "
                   "dtype: bfloat16, GPU supports bf16")


def summary(tmp_path, **kw) -> str:
    base = dict(out_dir=str(tmp_path), first_step=0, last_step=200, max_iters=200, tokens=200 * 1024,
                elapsed=366.0, final_val_loss=7.19, final_val_bpb=2.53, best_val_loss=7.19, best_val_bpb=2.53,
                checkpoints=["ckpt.pt", "ckpt_best.pt"])
    return run_summary(RunSummary(**{**base, **kw}))


def test_end_of_run_summary(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"x" * 2_000_000)
    os.link(tmp_path / "ckpt.pt", tmp_path / "ckpt_best.pt")
    lines = summary(tmp_path).splitlines()
    assert lines[0] == "run finished: 200 steps, 204,800 tokens, 6m06s of training"
    assert lines[1] == "  val loss 7.1900 (2.5300 bits per byte) at step 200"
    assert "best val loss" not in "\n".join(lines)  # the final eval was the best: said once
    assert lines[2] == f"  {tmp_path}/ckpt.pt and {tmp_path}/ckpt_best.pt: 2 MB, one file on disk (hard links: the same step)"
    commands = [line.strip() for line in lines[lines.index("next:") + 1:]]
    assert [shlex.split(c)[:2] for c in commands] == [["python", "sample.py"], ["python", "plot.py"],
                                                      ["python", "export.py"]]
    assert all(str(tmp_path) in shlex.split(c)[2] for c in commands)  # each names this run


def test_summary_of_a_stopped_resumed_run_with_separate_checkpoints(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"x" * 10)
    (tmp_path / "ckpt_best.pt").write_bytes(b"y" * 10)
    text = summary(tmp_path / "..", first_step=100, last_step=150, tokens=150 * 1024, final_val_loss=None,
                   final_val_bpb=None, best_val_loss=7.5, best_val_bpb=None, out_dir=str(tmp_path))
    lines = text.splitlines()
    assert lines[0].startswith("run stopped at step 150 of 200: 150 steps (this session: from step 100), 153,600 tokens")
    assert lines[1] == "  best val loss 7.5000"
    assert f"  {tmp_path}/ckpt.pt: 10 bytes" in lines and f"  {tmp_path}/ckpt_best.pt: 10 bytes" in lines
    assert "next (continue with --init_from=resume, or):" in lines


def test_summary_commands_paste_for_a_folder_with_a_space(tmp_path):
    run = tmp_path / "my run"
    run.mkdir()
    text = summary(run, checkpoints=[], out_dir=str(run))
    sample = next(line for line in text.splitlines() if "sample.py" in line)
    assert shlex.split(sample)[2] == f"--out_dir={run}"


def test_the_suggested_export_folder_sits_beside_the_run():
    assert [export_dir("out-tiny"), export_dir("runs/gpt2/"), export_dir("out")] == ["hf-tiny", "runs/hf-gpt2", "hf-out"]
