"""The run directory's log: config.json, metrics.jsonl (one JSON row per logged step) and wandb, plus the
clock and the number formats of the log line.

metrics.jsonl is read back by plot.py and bench/recipe.py while train.py may still be appending to it, and
rewritten on resume: read_metrics is the one reader, tolerant of a last line cut short.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from fineweb_gpt.atomic import atomic_write, write_json
from fineweb_gpt.distributed import Env
from fineweb_gpt.errors import UserError, raised_as
from fineweb_gpt.report import config_lines, duration

METRICS = "metrics.jsonl"


class RunDirError(UserError):
    """out_dir cannot be written: a full disk, a read-only folder, a file in its place."""


def out_dir_failed(e: OSError) -> RunDirError:
    return RunDirError(f"{e}\nA checkpoint already in out_dir is intact (every save is atomic): fix that, "
                       f"then continue with --init_from=resume")


def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl's rows, in order. A line that does not parse (cut short by a crash, or being written
    right now) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


def open_metrics(path: str, resume_step: int | None):
    """metrics.jsonl, open for appending. On resume, rows of the steps about to be redone are dropped
    (a run killed after its last checkpoint logged steps the resumed run replays)."""
    if resume_step is None or not os.path.exists(path):
        return open(path, "w" if resume_step is None else "a")
    kept = [row for row in read_metrics(path) if row["step"] < resume_step]
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    return open(path, "a")


class NullLogger:
    """wandb's interface, doing nothing, so the loop never asks whether wandb is on."""
    id = None
    def log(self, *args, **kwargs): pass
    def finish(self): pass


class RunLog:
    """The run directory's config.json and metrics.jsonl, and wandb: written by rank 0 only."""

    def __init__(self, cfg, env: Env, resume_step: int | None, wandb_id: str | None, record: dict):
        self.metrics, self.wandb = None, NullLogger()
        if not env.master:
            return
        with raised_as(out_dir_failed, OSError):
            os.makedirs(cfg.out_dir, exist_ok=True)
            write_json(os.path.join(cfg.out_dir, "config.json"), record)
            self.metrics = open_metrics(os.path.join(cfg.out_dir, METRICS), resume_step)
        print(config_lines(cfg, os.path.join(cfg.out_dir, "config.json")), flush=True)
        if cfg.wandb_log:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, id=wandb_id, resume="allow", config=asdict(cfg),
                                    name=cfg.wandb_run_name or os.path.basename(cfg.out_dir.rstrip("/")), dir=cfg.out_dir)

    def record(self, row: dict) -> None:
        if self.metrics:
            with raised_as(out_dir_failed, OSError):
                self.metrics.write(json.dumps(row) + "\n")
                self.metrics.flush()
        self.wandb.log(row, step=row["step"])

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        self.wandb.finish()


class Clock:
    """Seconds of the run across resumes: those saved in the checkpoint plus this process's since `start`
    (by default now)."""

    def __init__(self, before: float, start: float | None = None):
        self.before, self.start = before, time.time() if start is None else start

    def elapsed(self) -> float:
        return self.before + time.time() - self.start


def short_count(n: float) -> str:
    """3.15B, 524.29K: token counts in the log."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def eta(recent_step_times: list[float], steps_left: int) -> str:
    """Time to max_iters at the median of the recent update times (evals and checkpoint saves are not
    in them; the median ignores a one-off slow step such as the first, compiled one)."""
    times = sorted(recent_step_times)
    return duration(times[len(times) // 2] * steps_left)
