"""bench/precision.py runs both parts at a tiny size and reports what it measured."""
import math

import pytest

from conftest import load_script

bench_precision = load_script("bench/precision.py")


@pytest.mark.slow
def test_both_parts_run_and_the_bf16_loss_is_close(capsys):
    b = bench_precision.PrecisionBenchConfig(loss_rows=512, n_embd=32, vocab_size=2048, loss_steps=1, n_layer=1,
                                             step_embd=32, n_head=2, block_size=32, batch_size=2, timing_steps=1)
    out = bench_precision.main(b)
    assert abs(out["loss"]["bf16"]["loss"] - out["loss"]["fp32"]["loss"]) < 0.02  # ln(2048) = 7.6: bf16 steps 1/32
    assert set(out["step"]) == {"gpt2", "modern, NS fp32", "modern, NS bf16"}
    assert all(math.isfinite(v) and v > 0 for v in out["step"].values())
    assert "CPU capability" in capsys.readouterr().out
