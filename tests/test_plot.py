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
    run_train(synthetic_shards, out, "--max_iters=6", "--eval_interval=3")
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
    assert list(drawn["out-syn/train"].get_xdata()) == [r["tokens"] for r in rows if "loss" in r]
    assert list(drawn["out-syn/train"].get_ydata()) == [r["loss"] for r in rows if "loss" in r]
    assert list(drawn["out-syn/val"].get_xdata()) == [0, 384, 768]  # steps 0, 3, 6 of 128 tokens
    assert list(drawn["out-syn/val"].get_ydata()) == [r["val_loss"] for r in rows if "val_loss" in r]
    assert run.label == "out-syn: 2L x 32, adamw/cosine, 128 tok/step"


def test_references_only_for_runs_on_their_tokenizer_and_data(run_dir, tmp_path):
    refs = plot.load_references(plot.PlotConfig().references)
    run = plot.load_run(run_dir)
    assert run.tokenizer == "gpt2" and not run.fineweb  # synthetic shards without meta.json: GPT-2 ids, not FineWeb
    drawn = lines(plot.make_figure([run], refs)[0])
    forty = next(r for r in refs if r["name"].startswith("40M"))
    assert f"ref/{forty['name']}" not in drawn and not any("3.28" in gid for gid in drawn)
    run.fineweb = True
    drawn = lines(plot.make_figure([run], refs)[0])
    points = drawn[f"ref/{forty['name']}"]
    assert list(points.get_xdata()) == [s * 524288 for s in (0, 500, 1000, 2000, 3000, 4000, 5000, 6000)]
    assert list(points.get_ydata()) == [10.88, 5.86, 4.95, 4.48, 4.32, 4.24, 4.19, 4.17]
    assert list(drawn["ref/FineWeb val target 3.28"].get_ydata()) == [3.28, 3.28]
    run.tokenizer = "cl100k_base"
    assert not any(gid.startswith("ref/") for gid in lines(plot.make_figure([run], refs)[0]))


def test_a_run_in_progress_and_several_runs(run_dir, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    rows = metrics(run_dir)[:3]
    (live / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    fig, _ = plot.make_figure([plot.load_run(str(live)), plot.load_run(os.path.join(run_dir, "metrics.jsonl"))], [])
    drawn = lines(fig)
    assert list(drawn["live/train"].get_ydata()) == [r["loss"] for r in rows]  # the half-written line is skipped
    assert drawn["live/train"].get_color() != drawn["out-syn/train"].get_color()
    log_fig, _ = plot.make_figure([plot.load_run(run_dir)], [], log_tokens=True)
    assert 0 not in lines(log_fig)["out-syn/val"].get_xdata()  # step 0 has no place on a log axis
    (live / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # only step 0 (0 tokens) logged so far
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
