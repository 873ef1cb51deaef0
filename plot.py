"""Plot training runs: train and val loss against tokens seen, with reference points where they apply.

    python plot.py out-fineweb                                   # -> out-fineweb/loss.png
    python plot.py out-a out-b/metrics.jsonl --out=compare.png --log_tokens

Each run is an out_dir (or its metrics.jsonl); one colour per run, labelled with its name and recipe
from the out_dir's config.json, drawn above the reference points. Tokens on the x axis so runs with
different batch sizes line up; the top axis shows steps when every run has the same tokens per step.
A train loss is placed at the tokens seen once its step's batch is trained on (as the log line counts
them), so the train line ends where the run does. A run still in progress plots what it has logged so
far. Reference losses come from docs/reference_curves.json (each entry names its source) and are drawn
only for runs on the tokenizer (and data) they were measured on, since a loss in nats per token means
nothing across tokenizers, and only where they fall in the plotted range: a target loss far below the
runs' losses is named in a corner note instead of squeezing their curves. Drawn with matplotlib's Agg
canvas: no display needed.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field

from configurator import ConfigError, key, parse_config
from fineweb_gpt.errors import UserError
from fineweb_gpt import runlog
from fineweb_gpt import report

REPO = os.path.dirname(os.path.abspath(__file__))
WIDTH, HEIGHT, DPI = 10, 6, 100  # inches, inches, dots per inch: a 1000 x 600 PNG
RUN_Z, REFERENCE_Z = 3, 1  # runs drawn above the references
# A target line is drawn when it lies within this many times the runs' loss range beyond that range;
# farther away it would squeeze the runs' curves into a thin band, so a note names it instead.
TARGET_REACH = 0.5


@dataclass
class PlotConfig:
    out: str = key("", "image to write (.png, .svg or .pdf); '' = loss.png in the first run's folder")
    log_tokens: bool = key(False, "log-scaled token axis (step 0, at 0 tokens, is then off the axis)")
    references: str = key(os.path.join(REPO, "docs", "reference_curves.json"),
                          "reference losses to overlay ('' = none)")


class PlotError(UserError):
    """A run or reference file cannot be plotted; the message says which and why."""


@dataclass
class Run:
    name: str
    label: str                      # name and recipe, for the legend
    rows: list[dict]                # metrics.jsonl, in order
    tokens_per_step: int | None     # None without config.json
    tokenizer: str | None           # None when unknown
    fineweb: bool                   # trained on FineWeb (not FineWeb-Edu), as far as the config tells
    train: tuple[list, list] = field(init=False)
    val: tuple[list, list] = field(init=False)

    def __post_init__(self):
        # a train loss sits after its update's tokens: logged with the row (a batch warmup's are fewer), else (older
        # runs) a full update
        per_step = self.tokens_per_step or next((r["tokens"] // r["step"] for r in self.rows if r["step"]), 0)
        self.train = ([r["tokens"] + r.get("step_tokens", per_step) for r in self.rows if "loss" in r],
                      [r["loss"] for r in self.rows if "loss" in r])
        self.val = ([r["tokens"] for r in self.rows if "val_loss" in r],
                    [r["val_loss"] for r in self.rows if "val_loss" in r])


def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl's logged steps (a run still in progress plots what it has logged so far)."""
    rows = [row for row in runlog.read_metrics(path) if "tokens" in row]
    if not rows:
        raise PlotError(f"{path} holds no logged step yet; plot it once train.py has logged one")
    return rows


def describe_data(config: dict, record: dict) -> tuple[str | None, bool]:
    """(tokenizer name, trained on FineWeb) from config.json; older runs' tokenizer from the data's meta.json."""
    from fineweb_gpt import tokenizer
    from fineweb_gpt.dataloader import read_meta
    data_dir = config.get("data_dir") or os.path.join(REPO, "data", config.get("dataset", ""))
    meta = read_meta(data_dir) if os.path.isdir(data_dir) else {}
    name = (record.get("tokenizer") or {}).get("name")
    if name is None and os.path.isdir(data_dir):
        name = tokenizer.describe(meta)["name"]  # shards without meta.json are GPT-2's (llm.c's)
    # the sources prepare.py read, not the folder's name: data/fineweb is every run's default folder
    words = " ".join(s.get("name", "") for s in meta.get("sources", [])).lower()
    return name, re.search(r"fineweb(?![-_ ]?edu)", words) is not None


def load_run(path: str) -> Run:
    """A run from its out_dir or metrics.jsonl; config.json beside it gives the label and the data."""
    if os.path.isdir(path):
        folder, metrics = path, os.path.join(path, "metrics.jsonl")
        if not os.path.exists(metrics):
            raise PlotError(f"{path} holds no metrics.jsonl: pass a train.py out_dir or a metrics.jsonl file")
    elif os.path.isfile(path):
        folder, metrics = os.path.dirname(path) or ".", path
    else:
        raise PlotError(f"no such run directory or metrics file: {path}")
    rows = read_metrics(metrics)
    name = os.path.basename(os.path.abspath(folder))
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        return Run(name, f"{name} (no config.json)", rows, None, None, False)
    try:
        with open(config_path) as f:
            record = json.load(f)
        c = record["config"]
        tokens_per_step = int(record["tokens_per_step"])
        shape = record.get("model", c)  # the model's shape (a gpt2* init or a resume overrides the config's)
        recipe = (f"{shape['n_layer']}L x {shape['n_embd']}, {c.get('optimizer', 'adamw')}/"
                  f"{c.get('lr_schedule', 'cosine')}, {tokens_per_step:,} tok/step")
    except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable, cut short, or not train.py's record
        raise PlotError(f"cannot read {config_path} ({type(e).__name__}: {e}); train.py writes it at start-up: "
                        f"restore it, or remove it and the run is labelled by its folder") from e
    name = c.get("wandb_run_name") or name
    tokenizer_name, fineweb = describe_data(c, record)
    return Run(name, f"{name}: {recipe}", rows, tokens_per_step, tokenizer_name, fineweb)


def load_references(path: str) -> list[dict]:
    if not path:
        return []
    try:
        with open(path) as f:
            refs = json.load(f)["references"]
    except (OSError, ValueError, KeyError) as e:
        raise PlotError(f"cannot read reference curves from {path} ({type(e).__name__}: {e}); "
                        f"fix the file or pass --references=''") from None
    return refs


def applies(ref: dict, run: Run) -> bool:
    want = ref.get("applies_to", {})
    return (("tokenizer" not in want or run.tokenizer == want["tokenizer"]) and
            (not want.get("fineweb") or run.fineweb))


def positive(xy: tuple[list, list]) -> tuple[list, list]:
    """The points with tokens > 0: what a log axis can show (step 0 is at 0 tokens)."""
    kept = [(x, y) for x, y in zip(*xy) if x > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def make_figure(runs: list[Run], refs: list[dict], log_tokens: bool = False):
    """The figure: per run a faint train-loss line and a marked val-loss line (gids '<name>/train',
    '<name>/val'), above each reference that applies and falls in the plotted range (gid 'ref/<name>');
    a target out of reach is a corner note (gid 'note/<name>'). Returns (figure, one line per reference
    not drawn, saying why)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    shown = positive if log_tokens else (lambda xy: xy)
    xs, ys = [], []  # everything drawn, for the limits
    for run, colour in zip(runs, colours):
        train, val = shown(run.train), shown(run.val)
        ax.plot(*train, color=colour, alpha=0.45, lw=1, zorder=RUN_Z, label=f"{run.label} (train)",
                gid=f"{run.name}/train")
        ax.plot(*val, color=colour, marker="o", ms=4, lw=2, zorder=RUN_Z + 1, label=f"{run.label} (val)",
                gid=f"{run.name}/val")
        xs += train[0] + val[0]
        ys += train[1] + val[1]
    if not xs:
        raise PlotError("nothing past step 0 to show on a log tokens axis yet: plot without --log_tokens")
    x_max = max(xs) * 1.05 or 1.0
    x_min = min((x for x in xs if x > 0), default=1.0) / 1.5 if log_tokens else 0.0
    left_out = draw_references(ax, runs, refs, shown, (x_min, x_max), ys)
    span = max(ys) - min(ys) or 1.0
    ax.set_ylim(min(ys) - 0.05 * span, max(ys) + 0.05 * span)
    ax.set_xscale("log" if log_tokens else "linear")
    ax.set_xlim(x_min, x_max)
    ax.xaxis.set_major_formatter(FuncFormatter(thousands))
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(True, alpha=0.3)
    per_step = {run.tokens_per_step for run in runs}
    if len(per_step) == 1 and None not in per_step:  # one step size: steps read off the top axis
        n = per_step.pop()
        top = ax.secondary_xaxis("top", functions=(lambda t: t / n, lambda s: s * n))
        top.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole steps
        top.xaxis.set_major_formatter(FuncFormatter(thousands))
        top.set_xlabel(f"steps ({n:,} tokens each)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig, left_out


def thousands(x: float, _pos=None) -> str:
    """A tick label with thousands separators: 204,800; a fraction keeps its digits (2.5)."""
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,g}"


def draw_references(ax, runs: list[Run], refs: list[dict], shown, x_range: tuple[float, float],
                    ys: list[float]) -> list[str]:
    """Draw each reference that applies to a run and falls in reach of what the runs show, lighter and
    below them; extend ys by what is drawn. Returns why each other reference was left out."""
    lo, hi = min(ys), max(ys)
    reach = TARGET_REACH * ((hi - lo) or 1.0)
    left_out = []
    for i, ref in enumerate(refs):
        name = ref["name"]
        if not any(applies(ref, run) for run in runs):
            left_out.append(f"{name}: measured on another tokenizer or other data than these runs'")
            continue
        if ref["kind"] == "target":
            loss = ref["val_loss"]
            if lo - reach <= loss <= hi + reach:
                ax.axhline(loss, color="0.55", ls="--", lw=1, zorder=REFERENCE_Z, label=name, gid=f"ref/{name}")
                ys.append(loss)
                continue
            gap = f"{lo - loss:.2f} below the lowest" if loss < lo else f"{loss - hi:.2f} above the highest"
            note = f"{name}: {gap} loss shown (not drawn)"
            ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=8, color="0.35", ha="left", va="bottom",
                    gid=f"note/{name}")
            left_out.append(note)
            continue
        points = [(p["step"] * ref["tokens_per_step"], p["val_loss"]) for p in ref["points"]]
        x, y = shown(([p[0] for p in points if x_range[0] <= p[0] <= x_range[1]],
                      [p[1] for p in points if x_range[0] <= p[0] <= x_range[1]]))
        if not any(x):  # step 0 alone is every fresh model's ln(vocab): nothing to compare a run with
            left_out.append(f"{name}: no point past step 0 in the plotted token range")
            continue
        # points only: a line would invent the loss between evaluations thousands of steps apart
        ax.plot(x, y, color=f"{0.45 + 0.1 * (i % 3):.2f}", alpha=0.6, ls="none", marker="s^Dv"[i % 4], ms=5,
                zorder=REFERENCE_Z, label=f"{name} (val)", gid=f"ref/{name}")
        ys += y
    return left_out


def plot(paths: list[str], cfg: PlotConfig) -> str:
    """Draw the runs at `paths` into cfg.out; returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    if not paths:
        raise PlotError("name at least one run: python plot.py OUT_DIR [more out_dirs or metrics.jsonl files]")
    out = cfg.out or os.path.join(paths[0] if os.path.isdir(paths[0]) else os.path.dirname(paths[0]) or ".",
                                  "loss.png")
    fmt = os.path.splitext(out)[1].lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise PlotError(f"--out={out}: name a .png, .svg or .pdf file")
    runs = [load_run(p) for p in paths]
    fig, left_out = make_figure(runs, load_references(cfg.references), cfg.log_tokens)
    FigureCanvasAgg(fig)
    fig.savefig(out, format=fmt)
    for why in left_out:
        print(f"plot.py: reference not shown: {why}")
    print(f"plot.py: wrote {out} ({report.plural(len(runs), 'run')})")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    paths = [a for a in argv if not a.startswith("-")]
    options = [a for a in argv if a.startswith("-")]
    try:
        plot(paths, parse_config(PlotConfig, options, "plot.py [OUT_DIR | metrics.jsonl ...]"))
    except ConfigError as e:
        sys.exit(f"plot.py: config error: {e}")
    except UserError as e:
        sys.exit(f"plot.py: error: {e}")


if __name__ == "__main__":
    main()
