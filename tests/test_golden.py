"""A checked-in loss trajectory (torchtitan's contract test): a change that alters training numerics
(initialisation, data order, the loop, the optimizer) fails here, on purpose. If the change is meant,
re-record with `RECORD_GOLDEN=1 python -m pytest tests/test_golden.py` and say why in the commit."""
import json
import os

import pytest

from conftest import ROOT, metrics, run_train

GOLDEN = os.path.join(ROOT, "tests", "assets", "tiny_synthetic_losses.json")
RUN = ["--max_iters=12", "--eval_interval=6", "--dropout=0.1", "--gradient_accumulation_steps=2", "--seed=7"]


def test_tiny_run_reproduces_the_recorded_losses(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, *RUN)
    curve = {k: [r.get(k) for r in metrics(tmp_path)] for k in ("step", "loss", "val_loss", "lr", "grad_norm")}
    if os.environ.get("RECORD_GOLDEN"):
        with open(GOLDEN, "w") as f:  # one key per line
            f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in {"args": RUN, **curve}.items()) + "\n}\n")
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert golden["args"] == RUN and curve["step"] == golden["step"]
    for k in ("loss", "val_loss", "lr", "grad_norm"):  # fp32 on CPU: equal up to kernel rounding across machines
        assert curve[k] == pytest.approx(golden[k], rel=1e-4, nan_ok=True), k
