"""What the scripts print for a person to read: start-up lines, changed settings, the end-of-run summary.

Pure formatting: every function takes the values already decided (device, dtype and their reasons,
losses, paths) and returns text, so the wording is tested without running anything.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import textwrap
from typing import Any, Iterable


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 tensor', '17 tensors', '2 processes' (pass `many` where adding an s is wrong)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def count(n: float) -> str:
    """A parameter or token count as a person reads it: 6.44M, 1.20B; below a million, every digit (2,304)."""
    for unit, scale in (("B", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:,.0f}"


def size(n_bytes: int) -> str:
    """A file size in decimal units, as `ls -lh --si` and file managers show it: 161 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes} bytes"


def changes(old: dict, new: dict, keys: Iterable[str] | None = None) -> list[str]:
    """'key: old -> new' for each key whose value differs (all keys of both, or only `keys`)."""
    missing = object()
    names = list(keys) if keys is not None else list(dict.fromkeys([*old, *new]))
    out = []
    for k in names:
        a, b = old.get(k, missing), new.get(k, missing)
        if a != b:
            out.append(f"{k}: {'(not set)' if a is missing else repr(a)} -> {'(not set)' if b is missing else repr(b)}")
    return out


def non_defaults(cfg: Any) -> list[str]:
    """'key=value' for each field of a config dataclass that differs from its default."""
    return [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
            if f.default is not dataclasses.MISSING and getattr(cfg, f.name) != f.default]


def config_lines(cfg: Any, stored_at: str, width: int = 100) -> str:
    """The start-up config block: only the keys that differ from the defaults, several to a line; the full
    config is on disk."""
    changed = non_defaults(cfg)
    head = f"config: {plural(len(changed), 'key')} differ from the defaults" if changed else "config: all defaults"
    body = textwrap.wrap(", ".join(changed), width, initial_indent="  ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)
    return "\n".join([f"{head} (every key: {stored_at})", *body])


def choice_reason(reason: str, is_default: bool) -> str:
    """A choice's reason as printed: a key left at its default was not 'requested' by anyone."""
    return "the default" if is_default and reason == "as requested" else reason


def device_line(device: str, name: str, device_reason: str, dtype: str, dtype_reason: str,
                world_size: int = 1) -> str:
    """One line for where and in what precision the run computes, each choice with its reason."""
    where = device if name == device else f"{device} ({name})"
    procs = f", {plural(world_size, 'process', 'processes')}" if world_size > 1 else ""
    return f"device: {where}, {device_reason}{procs} | dtype: {dtype}, {dtype_reason}"


def param_group_line(name: str, numel: int, tensors: int, rest: str) -> str:
    """One optimizer group: 'adamw: norms and biases: 2,304 params in 17 tensors, AdamW, lr 0.02, ...'."""
    return f"{name}: {count(numel)} params in {plural(tensors, 'tensor')}, {rest}"


def duration(seconds: float) -> str:
    """1h02m03s, 4m05s or 6s (0s for a time already past)."""
    minutes, secs = divmod(max(0, int(round(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def checkpoint_lines(out_dir: str, names: Iterable[str]) -> list[str]:
    """Each checkpoint in out_dir with its size; files that are hard links of one another are said to be
    one file on disk (publish_copy links ckpt_best.pt to ckpt.pt when they hold the same step)."""
    paths = [os.path.join(out_dir, n) for n in names if os.path.exists(os.path.join(out_dir, n))]
    groups: dict[tuple[int, int], list[str]] = {}
    for p in paths:
        st = os.stat(p)
        groups.setdefault((st.st_dev, st.st_ino), []).append(p)
    lines = []
    for same in groups.values():
        bytes_ = os.path.getsize(same[0])
        if len(same) > 1:
            lines.append(f"{' and '.join(same)}: {size(bytes_)}, one file on disk (hard links: the same step)")
        else:
            lines.append(f"{same[0]}: {size(bytes_)}")
    return lines


def export_dir(out_dir: str) -> str:
    """The export folder suggested for a run: beside it, out-tiny -> hf-tiny, runs/a -> runs/hf-a."""
    parent, name = os.path.split(os.path.normpath(out_dir))
    return os.path.join(parent, "hf-" + (name[len("out-"):] if name.startswith("out-") and len(name) > 4 else name))


@dataclasses.dataclass
class RunSummary:
    """What a finished (or stopped) run tells its user last."""
    out_dir: str
    first_step: int                 # the step this invocation started from (0, or a resume's)
    last_step: int                  # the step the run reached
    max_iters: int | None           # None: a time-budgeted run stopped before its clock ran out
    tokens: int                     # tokens trained on across resumes
    elapsed: float                  # seconds of training across resumes
    final_val_loss: float | None    # None when the run stopped between evals
    final_val_bpb: float | None
    best_val_loss: float | None
    best_val_bpb: float | None
    checkpoints: list[str]          # file names in out_dir


def run_summary(s: RunSummary) -> str:
    """The last lines of a run: steps, tokens, time, losses, where the checkpoints are, what to run next."""
    bpb = lambda v: f" ({v:.4f} bits per byte)" if v is not None else ""  # noqa: E731
    done = s.max_iters is not None and s.last_step >= s.max_iters
    status = "finished" if done else f"stopped at step {s.last_step:,}" + (f" of {s.max_iters:,}" if s.max_iters else "")
    resumed = f" (this session: from step {s.first_step:,})" if s.first_step else ""
    lines = [f"run {status}: {plural(s.last_step, 'step')}{resumed}, {count(s.tokens)} tokens, "
             f"{duration(s.elapsed)} of training"]
    if s.final_val_loss is not None:
        lines.append(f"  val loss {s.final_val_loss:.4f}{bpb(s.final_val_bpb)} at step {s.last_step:,}")
    if s.best_val_loss is not None and s.best_val_loss != s.final_val_loss:
        lines.append(f"  best val loss {s.best_val_loss:.4f}{bpb(s.best_val_bpb)}")
    lines += [f"  {line}" for line in checkpoint_lines(s.out_dir, s.checkpoints)]
    out = shlex.quote(s.out_dir)
    lines.append("next:" if done else "next (continue with --init_from=resume, or):")
    lines += [f"  python sample.py --out_dir={out}",
              f"  python plot.py {out}",
              f"  python export.py --out_dir={out} --hf_dir={shlex.quote(export_dir(s.out_dir))}"]
    return "\n".join(lines)
