"""plot.py: the image is written, and what it draws is what metrics.jsonl and the reference file hold."""
import json
import os

import pytest

import plot
from conftest import metrics, run_train


def lines(fig):
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


@pytest.fixture(scope="module")
def run_dir(synthetic_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out-syn"
    run_train(synthetic_shards, out, "--max_iters=6", "--eval_interval=3", "--log_interval=4")  # logs 0, 4 and the last, 5
    return str(out)


def test_png_is_written_at_its_size_with_the_runs_points(run_dir, tmp_path):
    from PIL import Image
    out = tmp_path / "loss.png"
    plot.main([run_dir, f"--out={out}"])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (plot.WIDTH * plot.DPI, plot.HEIGHT * plot.DPI)
    run = plot.load_run(run_dir)
    drawn = lines(plot.make_figure([run], [])[0])
    rows = metrics(run_dir)
    # a train loss sits at the tokens seen once its step's batch is trained on: the line ends with the run
    assert list(drawn["out-syn/train"].get_xdata()) == [r["tokens"] + 128 for r in rows if "loss" in r]
    assert list(drawn["out-syn/train"].get_ydata()) == [r["loss"] for r in rows if "loss" in r]
    assert list(drawn["out-syn/val"].get_xdata()) == [0, 384, 768]  # steps 0, 3, 6 of 128 tokens
    assert [r["step"] for r in rows if "loss" in r] == [0, 4, 5]  # the last update is logged whatever log_interval
    assert drawn["out-syn/train"].get_xdata()[-1] == 768
    assert list(drawn["out-syn/val"].get_ydata()) == [r["val_loss"] for r in rows if "val_loss" in r]
    assert run.label == "out-syn: 2L x 32, adamw/cosine, 128 tok/step"


def test_a_batch_warmup_places_each_train_loss_after_its_own_updates_tokens(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=4", "--eval_interval=4", "--gradient_accumulation_steps=4",
              "--batch_warmup_iters=4")  # updates of 1, 2, 3 then 4 micro-batches of 128 tokens
    rows = metrics(tmp_path)
    train_x = list(plot.load_run(str(tmp_path)).train[0])
    assert train_x == [128, 384, 768, 1280]  # the tokens the next row starts from
    assert train_x == [r["tokens"] for r in rows][1:]
    old = [{k: v for k, v in r.items() if k != "step_tokens"} for r in rows]  # metrics from before step_tokens
    assert list(plot.Run("old", "old", old, 512, None, False).train[0]) == [512, 640, 896, 1280]  # full updates


def test_references_only_for_runs_on_their_tokenizer_and_data(run_dir, tmp_path):
    refs = plot.load_references(plot.PlotConfig().references)
    run = plot.load_run(run_dir)
    assert run.tokenizer == "gpt2" and not run.fineweb  # synthetic shards without meta.json: GPT-2 ids, not FineWeb
    drawn = lines(plot.make_figure([run], refs)[0])
    forty = next(r for r in refs if r["name"].startswith("40M"))
    assert f"ref/{forty['name']}" not in drawn and not any("3.28" in gid for gid in drawn)
    long = fake_run([(0, 10.9, 10.9), (3000, 4.0, 3.9), (6000, 3.6, 3.5)], tokens_per_step=524288)
    drawn = lines(plot.make_figure([long], refs)[0])
    points = drawn[f"ref/{forty['name']}"]
    assert list(points.get_xdata()) == [s * 524288 for s in (0, 500, 1000, 2000, 3000, 4000, 5000, 6000)]
    assert list(points.get_ydata()) == [10.88, 5.86, 4.95, 4.48, 4.32, 4.24, 4.19, 4.17]
    assert list(drawn["ref/FineWeb val target 3.28"].get_ydata()) == [3.28, 3.28]
    run.tokenizer = "cl100k_base"
    assert not any(gid.startswith("ref/") for gid in lines(plot.make_figure([run], refs)[0]))


def test_a_run_in_progress_and_several_runs(run_dir, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    rows = [r for r in metrics(run_dir) if "loss" in r][:3]
    (live / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    fig, _ = plot.make_figure([plot.load_run(str(live)), plot.load_run(os.path.join(run_dir, "metrics.jsonl"))], [])
    drawn = lines(fig)
    assert list(drawn["live/train"].get_ydata()) == [r["loss"] for r in rows]  # the half-written line is skipped
    assert drawn["live/train"].get_color() != drawn["out-syn/train"].get_color()
    log_fig, _ = plot.make_figure([plot.load_run(run_dir)], [], log_tokens=True)
    assert 0 not in lines(log_fig)["out-syn/val"].get_xdata()  # step 0 has no place on a log axis
    (live / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # only step 0 logged so far: its update's
    log_fig, _ = plot.make_figure([plot.load_run(str(live))], [], log_tokens=True)  # tokens place its loss
    assert list(lines(log_fig)["live/train"].get_xdata()) == [128]
    old_row = {k: v for k, v in rows[0].items() if k != "step_tokens"}  # metrics from before step_tokens, no config
    (live / "metrics.jsonl").write_text(json.dumps(old_row) + "\n")
    with pytest.raises(plot.PlotError, match="nothing past step 0"):
        plot.make_figure([plot.load_run(str(live))], [], log_tokens=True)


def test_bad_input_is_named(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="no such run directory or metrics file"):
        plot.main([str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="holds no metrics.jsonl"):
        plot.main([str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no logged step yet"):
        plot.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="name a .png"):
        plot.main([run_dir, "--out=loss.jpeg"])
    with pytest.raises(SystemExit, match="name at least one run"):
        plot.main([])
    with pytest.raises(SystemExit, match="closest|did you mean"):
        plot.main([run_dir, "--log_token=True"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"step": 0, "tokens": 0, "val_loss": 10.8}\n')
    for text in ("{not json", '{"config": {}}'):  # cut short; not train.py's record
        (broken / "config.json").write_text(text)
        with pytest.raises(SystemExit, match=r"cannot read .*config\.json .*restore it, or remove it"):
            plot.main([str(broken), f"--out={tmp_path / 'x.png'}"])


def fake_run(points: list[tuple[int, float, float]], tokens_per_step: int = 1024) -> plot.Run:
    """A FineWeb run on GPT-2's tokenizer with (step, train loss, val loss) rows."""
    rows = [{"step": st, "tokens": st * tokens_per_step, "loss": tr, "val_loss": va} for st, tr, va in points]
    return plot.Run("fake", "fake run", rows, tokens_per_step, "gpt2", True)


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_the_run_is_drawn_above_lighter_references_and_the_legend_lists_only_what_is_drawn():
    refs = plot.load_references(plot.PlotConfig().references)
    tiny = fake_run([(0, 10.8, 10.8), (100, 7.6, 7.4), (200, 6.4, 7.2)])  # the CPU quickstart's range
    fig, left_out = plot.make_figure([tiny], refs)
    drawn = lines(fig)
    cpu = next(r["name"] for r in refs if r["name"].startswith("CPU quickstart"))
    reference, val = drawn[f"ref/{cpu}"], drawn["fake/val"]
    assert val.get_zorder() > reference.get_zorder() and drawn["fake/train"].get_zorder() > reference.get_zorder()
    assert reference.get_alpha() < 1 and val.get_alpha() in (None, 1)
    assert list(reference.get_xdata()) == [0, 51200, 102400, 153600, 204800]
    # the 40M reference's only point in range is its step 0, the others lie millions of tokens to the right
    forty = next(r["name"] for r in refs if r["name"].startswith("40M"))
    assert f"ref/{forty}" not in drawn and f"{forty}: no point past step 0 in the plotted token range" in left_out
    assert sorted(legend_labels(fig)) == sorted(line.get_label() for line in drawn.values())
    # the 3.28 target is 3.1 below this run's lowest loss: a note, no line, no legend entry, no stretched axis
    assert "ref/FineWeb val target 3.28" not in drawn
    notes = [t.get_text() for t in fig.axes[0].texts if (t.get_gid() or "").startswith("note/")]
    assert notes == ["FineWeb val target 3.28: 3.12 below the lowest loss shown (not drawn)"]
    assert notes[0] in left_out
    assert fig.axes[0].get_ylim()[0] > 6


def test_a_reference_outside_the_plotted_tokens_is_left_out_of_the_legend():
    ref = {"name": "far", "kind": "curve", "tokens_per_step": 1_000_000, "applies_to": {"tokenizer": "gpt2"},
           "points": [{"step": 10, "val_loss": 5.0}, {"step": 20, "val_loss": 4.5}]}
    fig, left_out = plot.make_figure([fake_run([(0, 10.8, 10.8), (200, 6.4, 7.2)])], [ref])
    assert "ref/far" not in lines(fig) and not any("far" in label for label in legend_labels(fig))
    assert left_out == ["far: no point past step 0 in the plotted token range"]


def test_token_axis_has_thousands_separators(run_dir):
    fig, _ = plot.make_figure([fake_run([(0, 10.8, 10.8), (200, 6.4, 7.2)])], [])
    assert fig.axes[0].xaxis.get_major_formatter()(204800, 0) == "204,800"
    assert plot.thousands(2.5) == "2.5"  # a fraction is not rounded into another number


def test_default_output_is_beside_the_run(run_dir, tmp_path):
    import shutil
    run = tmp_path / "out-copy"
    shutil.copytree(run_dir, run)
    assert plot.main([str(run)]) is None and (run / "loss.png").exists()
    plot.main([str(run / "metrics.jsonl"), f"--out={tmp_path / 'x.svg'}", "--log_tokens"])  # a bare flag works
    assert (tmp_path / "x.svg").exists()
