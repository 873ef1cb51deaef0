"""The depth dial and the time budget through train.py: the keys the dial sets, depth=auto's choice from
(injected) speeds, and a budgeted run that ends on time with its cooldown done, resumed or not."""
import contextlib
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import train
from configurator import ConfigError, parse_config
from conftest import ROOT, TINY, metrics, run_train
from fineweb_gpt import plan
from fineweb_gpt.distributed import Env
from fineweb_gpt.runlog import Clock
from model import count_params


def config(*args):
    return parse_config(train.TrainConfig, ["--device=cpu", *args])


def test_the_dial_sets_shape_horizon_batch_and_rates():
    cfg, notes = plan.dial(config("--depth=6", "--block_size=256", "--batch_size=8"), 6, 1, train.model_config)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head) == (6, 384, 6)
    params = count_params(train.model_config(cfg))["total"]
    assert cfg.total_batch_size % (8 * 256) == 0
    assert cfg.max_iters == math.ceil(20 * params / cfg.total_batch_size)  # Chinchilla's 20 tokens per parameter
    reference, _ = plan.dial(config("--block_size=256", "--batch_size=8"), plan.REFERENCE_DEPTH, 1, train.model_config)
    batch = plan.batch_for_horizon(20 * params, 20 * count_params(train.model_config(reference))["total"])
    assert cfg.total_batch_size == max(1, round(batch / (8 * 256))) * 8 * 256
    scale = (cfg.total_batch_size / plan.REFERENCE_BATCH) ** 0.5
    defaults = train.TrainConfig()
    assert cfg.learning_rate == pytest.approx(defaults.learning_rate * scale)
    assert cfg.min_lr == pytest.approx(defaults.min_lr * scale)
    assert any("max_iters" in n for n in notes)


def test_the_dial_keeps_value_embedding_tables_within_its_depth():
    cfg, notes = plan.dial(config("--depth=4", "--value_embeds=3"), 4, 1, train.model_config)
    assert (cfg.n_layer, cfg.value_embeds) == (4, 2) and "value_embeds=2" in notes[0]  # 3 tables need 6 layers
    cfg, _ = plan.dial(config("--depth=8", "--value_embeds=3"), 8, 1, train.model_config)
    assert cfg.value_embeds == 3


def test_explicit_keys_win_over_the_dial():
    given = config("--depth=6", "--n_embd=768", "--n_head=12", "--max_iters=50", "--learning_rate=1e-3",
                   "--total_batch_size=8192", "--block_size=256", "--batch_size=8")
    cfg, _ = plan.dial(given, 6, 1, train.model_config)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.max_iters) == (6, 768, 12, 50)
    assert (cfg.learning_rate, cfg.total_batch_size) == (1e-3, 8192)


def test_a_time_budget_needs_wsd_and_a_duration_and_depth_auto_needs_a_budget():
    with pytest.raises(ConfigError, match="lr_schedule=wsd"):
        train.check_config(config("--time_budget=1h"))
    with pytest.raises(ConfigError, match="time_budget"):
        train.check_config(config("--time_budget=1 hour", "--lr_schedule=wsd"))
    with pytest.raises(ConfigError, match="depth=auto"):
        train.check_config(config("--depth=auto"))
    train.check_config(config("--time_budget=2h30m", "--lr_schedule=wsd", "--max_iters=10"))


@pytest.mark.slow  # builds and steps models up to depth 8
def test_depth_auto_picks_a_deeper_model_for_a_longer_budget(monkeypatch):
    """Speeds are injected (no timing): 40 billion parameter-tokens per second, so deeper is slower."""
    measured = []

    def fake_speed(model, *args):
        measured.append(model.config.n_layer)
        return 4e10 / model.num_params()["total"]

    monkeypatch.setattr(plan, "measure_tokens_per_s", fake_speed)
    chosen = {}
    for budget in ("1h", "24h"):
        cfg = config(f"--time_budget={budget}", "--lr_schedule=wsd", "--depth=auto", "--block_size=64",
                     "--batch_size=2", "--vocab_size=512", "--compile=False")
        measured.clear()
        chosen[budget] = train.depth_by_speed(cfg, Env("cpu"), "float32", contextlib.nullcontext(), Clock(0.0))
        # increasing depths, up to and including the first that does not fit
        assert measured and measured == list(train.AUTO_DEPTHS[:len(measured)])
        assert measured[-1] == train.AUTO_DEPTHS[train.AUTO_DEPTHS.index(chosen[budget]) + 1]
    # 4e10 / params tokens/s against 20 * params tokens: depth 2 (0.52M params) fits 1 h, depth 4 (3.4M) does not;
    # depth 6 (11.0M) fits 24 h, depth 8 (25.6M) does not
    assert chosen == {"1h": 2, "24h": 6}


BUDGETED = [*TINY, "--lr_schedule=wsd", "--min_lr=1e-4", "--cooldown_frac=0.3", "--eval_interval=25",
            "--log_interval=1"]


def last_update(out) -> dict:
    return [r for r in metrics(out) if "lr" in r][-1]


@pytest.mark.slow
def test_a_budgeted_run_interrupted_and_resumed_uses_its_budget_and_ends_within_it(synthetic_shards, tmp_path):
    args = [sys.executable, os.path.join(ROOT, "train.py"), *BUDGETED, f"--data_dir={synthetic_shards}",
            f"--out_dir={tmp_path}", "--time_budget=12s"]
    start = time.time()
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    first.send_signal(signal.SIGINT)  # stops after this step and saves
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "SIGINT received" in out, err
    second = subprocess.run([*args, "--init_from=resume"], capture_output=True, text=True, timeout=120)
    took = time.time() - start
    assert second.returncode == 0 and "resume: from step" in second.stdout, second.stderr
    rows = metrics(tmp_path)
    elapsed = [r["elapsed"] for r in rows if "elapsed" in r]
    assert elapsed == sorted(elapsed)  # the resumed run's clock continues from the first's, never restarts
    # the budget is used, within 10%, set-up, evals and the last checkpoint included; +10 s of wall clock: the
    # second process's start-up
    assert 12 * 0.9 <= rows[-1]["elapsed"] <= 12 * 1.1 and took <= 12 * 1.1 + 10
    assert last_update(tmp_path)["lr"] == pytest.approx(1e-4)  # the schedule at its end value
    assert max(r["lr"] for r in rows if "lr" in r) == pytest.approx(3e-3)  # the stable phase ran


@pytest.mark.slow
def test_under_torchrun_every_process_stops_at_the_same_step(synthetic_shards, tmp_path):
    """Each process takes the clock's decision from the same averaged numbers; one that stopped alone would
    leave the others waiting in a collective until the timeout."""
    from test_multinode import run, torchrun
    run(torchrun(2, "--lr_schedule=wsd", "--min_lr=1e-4", "--eval_interval=25", f"--data_dir={synthetic_shards}",
                 f"--out_dir={tmp_path}", "--time_budget=8s", launcher=["--standalone"]))
    assert last_update(tmp_path)["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("batch", [["--gradient_accumulation_steps=4"], ["--batch_size=auto", "--total_batch_size=512"]],
                         ids=["fixed", "auto"])
def test_plan_only_counts_the_smaller_updates_of_a_batch_warmup(tmp_path, capsys, batch):
    from fineweb_gpt.batch import BatchSchedule
    from fineweb_gpt.runlog import short_count
    run_train(tmp_path / "no data needed", tmp_path / "out", "--plan_only=True", "--batch_warmup_iters=1000",
              "--max_iters=2000", *batch)
    # 512 tokens per full update; fixed: 4 micro-batches of 4 x 32 tokens, starting from 1; auto: counted in
    # micro-batches of one sequence, 16 per update, starting from 4
    micro_steps, micro_tokens = (4, 128) if batch[0].startswith("--gradient") else (16, 32)
    tokens = BatchSchedule(micro_steps, micro_tokens, 1000, 0.25).tokens_before(2000)
    assert tokens < 2000 * 512
    assert f"plan: 2,000 steps x up to 512 tokens = {short_count(tokens)} tokens" in capsys.readouterr().out
