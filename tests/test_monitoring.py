"""What train.py reports while it runs: bits per byte of the val text, tokens seen, ETA, elapsed time."""
import math
import re

from fineweb_gpt import runlog
from conftest import losses, metrics, run_train
from fineweb_gpt.dataloader import ValSet, read_meta


def test_val_bytes_are_the_evaluated_targets_text(shards, tiktoken_cache):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    val = ValSet(shards, 4, 32, 3)
    line = val.count_text_bytes(read_meta(shards))
    targets = val.targets()
    assert targets.shape == (12, 32) and val.num_tokens == 12 * 32
    # independently: decode exactly the predicted tokens (end-of-text marks a boundary, not text) and count bytes
    text = enc.decode_bytes([t for t in targets.ravel().tolist() if t != enc.eot_token])
    assert val.text_bytes == len(text) and f"{len(text):,} bytes" in line
    assert math.isclose(val.bits_per_byte(3.0), 3.0 * 384 / len(text) / math.log(2))


def test_bits_per_byte_is_na_without_recorded_bytes(shards, synthetic_shards, tiktoken_cache, tmp_path):
    assert "n/a (no meta.json" in ValSet(synthetic_shards, 4, 32, 2).count_text_bytes({})
    meta = read_meta(shards)
    older = {**meta, "shards": [{k: v for k, v in s.items() if k != "text_bytes"} for s in meta["shards"]]}
    val = ValSet(shards, 4, 32, 2)
    assert "re-run it with --overwrite" in val.count_text_bytes(older) and val.bits_per_byte(3.0) is None
    # a meta.json whose byte count does not match its tokens under the named tokenizer is not trusted
    wrong = {**meta, "shards": [{**s, "text_bytes": s["text_bytes"] + 1} for s in meta["shards"]]}
    assert "do not decode to" in val.count_text_bytes(wrong) and val.text_bytes is None


def test_log_lines_report_tokens_eta_elapsed_and_bpb(shards, tmp_path, capsys):
    run_train(shards, tmp_path, "--max_iters=4", "--eval_interval=2", "--total_batch_size=256",
              "--gradient_accumulation_steps=0")
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if re.match(r"step \d+: loss", line)]
    assert len(steps) == 4 and re.search(r"\| 256 tokens \| ETA \d+s$", steps[0]), steps[0]
    assert "| 1.02K tokens | ETA 0s" in steps[3]  # 4 updates of 256 tokens; nothing left
    evals = [line for line in out.splitlines() if re.match(r"step \d+: val loss", line)]
    assert len(evals) == 3 and all(re.search(r"\| val bpb \d\.\d{4} \| elapsed \d+s$", e) for e in evals)
    rows = [r for r in metrics(tmp_path) if "val_loss" in r]
    val = ValSet(shards, 4, 32, 2)  # the run's val set: batch_size=4, eval_iters=2 (TINY)
    val.count_text_bytes(read_meta(shards))
    assert [r["val_bpb"] for r in rows] == [val.bits_per_byte(r["val_loss"]) for r in rows]
    assert len(losses(tmp_path)) == 4


def test_no_bpb_for_shards_without_meta(synthetic_shards, tmp_path, capsys):
    run_train(synthetic_shards, tmp_path, "--max_iters=1", "--eval_interval=1")
    out = capsys.readouterr().out
    assert "val bits per byte: n/a (no meta.json" in out and "| val bpb n/a | elapsed" in out
    assert not any("val_bpb" in r for r in metrics(tmp_path))  # no made-up number in metrics.jsonl or wandb


def test_eta_uses_the_median_of_recent_update_times():
    assert runlog.eta([0.5, 60.0, 0.5], 120) == "1m00s"  # one slow (compiling) step does not count
    assert runlog.duration(3723) == "1h02m03s" and runlog.short_count(3_145_728_000) == "3.15B"
