"""bench/memory.py runs each variant in its own process and prints a table (tiny shapes; the real ones are slow)."""
import subprocess
import sys

import pytest

from conftest import ROOT

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2", "--vocab_size=512",
        "--warmup_steps=1", "--steps=1"]


def bench(*args):
    return subprocess.run([sys.executable, "bench/memory.py", *TINY, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_step_and_loss_modes_report_every_variant_with_the_same_loss():
    r = bench("--variants=plain,chunked,nanogpt")
    assert r.returncode == 0, r.stderr
    assert "pass --nanogpt_dir=PATH" in r.stdout  # the reference is left out, with what to pass
    rows = {line.split("|")[1].strip(): line.split("|") for line in r.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"plain", "chunked"} and "nanogpt" not in rows
    assert rows["plain"][7] == rows["chunked"][7]  # the same loss, to 4 decimals
    r = bench("--mode=loss", "--loss_rows=64")
    rows = {line.split("|")[1].strip(): line.split("|") for line in r.stdout.splitlines() if line.startswith("| ")}
    assert rows["loss-plain"][7] == rows["loss-chunked"][7], r.stdout
    assert "loss-softcap-chunked" not in rows  # it needs a softcap
    r = bench("--mode=loss", "--loss_rows=64", "--logit_softcap=0.5", "--variants=loss-plain,loss-softcap-chunked")
    rows = {line.split("|")[1].strip(): line.split("|") for line in r.stdout.splitlines() if line.startswith("| ")}
    assert rows["loss-plain"][7] == rows["loss-softcap-chunked"][7], r.stdout  # both softcapped, the same loss


@pytest.mark.slow
def test_a_wrong_nanogpt_dir_or_variant_is_a_message():
    r = bench("--nanogpt_dir=/nonexistent")
    assert r.returncode != 0 and "holds no model.py" in r.stderr and "Traceback" not in r.stderr
    r = bench("--mode=loss", "--variants=chunked")
    assert "not in mode=loss's loss-plain, loss-chunked, loss-softcap-chunked" in r.stderr
    r = bench("--mode=loss", "--variants=loss-softcap-chunked")
    assert r.returncode != 0 and "pass --logit_softcap=C" in r.stderr and "Traceback" not in r.stderr
