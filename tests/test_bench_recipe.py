"""bench/recipe.py: learning rates chosen on the select half, losses reported from the other, finished runs reused."""
import json
import os

import pytest
import torch

from conftest import load_script

bench_recipe = load_script("bench/recipe.py")
from configurator import ConfigError, parse_config


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = [(0, 10.0), (100, 8.0), (200, 6.0)]
    assert bench_recipe.tokens_to_reach(curve, 7.0) == 150.0
    assert bench_recipe.tokens_to_reach(curve, 8.0) == 100.0
    assert bench_recipe.tokens_to_reach(curve, 5.0) is None  # never reached: said, not extrapolated


def test_an_unknown_variant_is_named():
    known = ", ".join(repr(name) for name in bench_recipe.OPTIONS)
    with pytest.raises(ConfigError, match=rf"variants: unknown \['qwen'\]; choose from \[{known}\]"):
        bench_recipe.parse_variants("relu2,softcap+qwen")


def test_a_variant_is_the_base_recipe_with_its_options_on_top():
    keys = bench_recipe.recipe_keys("softcap+relu2", base="relu2")
    assert keys == {**bench_recipe.MODERN, "mlp": "relu2", "logit_softcap": 15.0}
    assert bench_recipe.recipe_keys("modern", base="softcap")["logit_softcap"] == 15.0
    assert bench_recipe.recipe_keys("gpt2", base="softcap") == bench_recipe.GPT2
    b = bench_recipe.RecipeBenchConfig(max_iters=77, block_size=1024)
    window = bench_recipe.run_config(b, "window", 0.02, "", "")
    assert window.window_warmup_iters == 77  # grows over the whole run
    assert (window.attn_window, window.window_start) == (256, 64)  # a quarter of the row, from a sixteenth
    assert bench_recipe.run_config(bench_recipe.RecipeBenchConfig(block_size=2048), "window", 0.02, "", "").attn_window \
        == 512  # as measured in docs/benchmarks.md
    assert bench_recipe.run_config(b, "batch_warmup", 0.02, "", "").batch_warmup_iters == 26  # a third of it


def test_a_final_eval_larger_than_a_val_half_is_refused_before_any_training(synthetic_shards, tmp_path):
    b = bench_recipe.RecipeBenchConfig(data_dir=synthetic_shards, out_dir=str(tmp_path), n_layer=1, n_embd=32,
                                       block_size=32, batch_size=4, final_eval_iters=10**6)
    with pytest.raises(ConfigError, match=r"final_eval_iters=1000000: the select half of val holds \d+ batches of 4 "
                                          r"rows of 33 tokens; set final_eval_iters to at most \d+"):
        bench_recipe.compare(b)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".log")]  # no run started


def test_a_variant_whose_keys_do_not_fit_the_shape_is_refused_before_any_training(synthetic_shards, tmp_path):
    b = bench_recipe.RecipeBenchConfig(data_dir=synthetic_shards, out_dir=str(tmp_path), n_layer=1, n_embd=32,
                                       block_size=30, batch_size=4, variants="seq_warmup")  # a quarter of 30: 8
    with pytest.raises(ConfigError, match="set seq_start to block_size divided by a power of two"):
        bench_recipe.compare(b)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".log")]


@pytest.mark.slow  # three tiny training runs and the timing rounds
def test_chooses_on_select_reports_on_report_and_reuses_finished_runs(synthetic_shards, tmp_path):
    args = [f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--block_size=32", "--batch_size=4", "--max_iters=6", "--warmup_iters=1", "--eval_interval=3",
            "--eval_iters=2", "--gpt2_lrs=1e-4,3e-3", "--modern_lrs=0.02", "--variants=", "--timing_steps=1"]
    cfg = parse_config(bench_recipe.RecipeBenchConfig, args)
    results = bench_recipe.compare(cfg)
    gpt2 = [r for r in results["runs"] if r["recipe"] == "gpt2"]
    assert results["chosen"]["gpt2"] == min(gpt2, key=lambda r: r["select_loss"])["lr"]
    for run in results["runs"]:  # every reported curve is the run's own report-half evaluations
        rows = [json.loads(line) for line in open(tmp_path / f"{run['recipe']}-lr{run['lr']:g}" / "metrics.jsonl")]
        assert [tuple(p) for p in run["curve"]] == [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
        assert run["select_loss"] != run["final_loss"]  # two different halves of the val split
        assert run["report_loss"] == pytest.approx(run["final_loss"], abs=1e-6)  # the curve's end, measured again
    assert results["target"] == min(gpt2, key=lambda r: r["select_loss"])["final_loss"]
    assert set(results["ms_per_step"]) == set(bench_recipe.RECIPES)  # untrained variants are timed too
    chosen = [r for r in results["runs"] if r["lr"] == results["chosen"][r["recipe"]]]
    assert all(r["params"] > 0 and 0.1 < r["peak_rss_gib"] < 8 for r in chosen)  # each measured in its own process

    # a run that finished before train.py gained a key (here: val_batch_size) is kept, not trained again
    ckpt_path = tmp_path / "modern-lr0.02" / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["config"]["val_batch_size"]
    torch.save(ckpt, ckpt_path)
    stamps = {d: os.path.getmtime(tmp_path / d / "metrics.jsonl") for d in ("modern-lr0.02", "gpt2-lr0.003")}
    again = bench_recipe.compare(parse_config(bench_recipe.RecipeBenchConfig,
                                                        [*args, "--reuse=True", "--timing_steps=0"]))
    assert stamps == {d: os.path.getmtime(tmp_path / d / "metrics.jsonl") for d in stamps}
    assert [r["final_loss"] for r in again["runs"]] == [r["final_loss"] for r in results["runs"]]
