"""The learning-rate schedule: linear warmup, then a cosine or warmup-stable-decay (WSD) descent to min_lr;
Muon's momentum warmup; the attention window schedule and the sequence-length warmup's row length."""
from __future__ import annotations

import math
from typing import Protocol

from fineweb_gpt import report


class ScheduleKeys(Protocol):
    """The config keys the schedule reads (train.py's TrainConfig has them all)."""
    learning_rate: float
    min_lr: float
    max_iters: int
    decay_lr: bool
    lr_schedule: str
    warmup_iters: int
    lr_decay_iters: int
    cooldown_frac: float


SCHEDULE_KEYS = tuple(ScheduleKeys.__annotations__)


def warmup_lr(step: int, learning_rate: float, warmup_iters: int) -> float:
    """The linear warmup: step 0 already moves (1/(warmup_iters+1) of the rate), step warmup_iters reaches it."""
    return learning_rate * (step + 1) / (warmup_iters + 1)


def get_lr(step: int, cfg: ScheduleKeys) -> float:
    """The main group's learning rate at step: linear warmup, then down to min_lr at lr_decay_iters (default
    max_iters), then min_lr. cosine: a half cosine; wsd: learning_rate, then a straight line over the last
    cooldown_frac of the schedule (warmup-stable-decay, Hu et al. 2024; modded-nanogpt and nanochat)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return warmup_lr(step, cfg.learning_rate, cfg.warmup_iters)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if cfg.lr_schedule == "wsd":
        cooldown = max(1, round(cfg.cooldown_frac * decay_iters))
        done = (step - (decay_iters - cooldown)) / cooldown  # <= 0 before the cooldown, 1 at its end
        return cfg.learning_rate - min(1.0, max(0.0, done)) * (cfg.learning_rate - cfg.min_lr)
    if step >= decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


class MomentumKeys(Protocol):
    """The config keys the momentum warmup reads (TrainConfig and OptimizerSettings have them)."""
    muon_momentum: float
    muon_momentum_start: float
    muon_momentum_warmup: int


def get_muon_momentum(step: int, cfg: MomentumKeys) -> float:
    """Muon's momentum at step: a straight line from muon_momentum_start at step 0 to muon_momentum at step
    muon_momentum_warmup, then muon_momentum (modded-nanogpt: 0.85 to 0.95 over 300 steps; nanochat: 0.85 to
    0.97 over 400). Without a warmup (muon_momentum_warmup=0), muon_momentum at every step."""
    if step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    done = step / cfg.muon_momentum_warmup
    return cfg.muon_momentum_start + done * (cfg.muon_momentum - cfg.muon_momentum_start)


def describe_change(step: int, old: ScheduleKeys, new: ScheduleKeys) -> str | None:
    """On resume: what moves the learning rate at step from the old run's schedule to this one's, or None."""
    if get_lr(step, old) == get_lr(step, new):
        return None
    changed = report.changes({k: getattr(old, k) for k in SCHEDULE_KEYS}, {k: getattr(new, k) for k in SCHEDULE_KEYS})
    return (f"the schedule changed ({'; '.join(changed)}): lr at step {step} goes from {get_lr(step, old):.3g} "
            f"to {get_lr(step, new):.3g}")


MAX_SEQ_RATIO = 64  # block_size/seq_start: 7 lengths at most, each compiled once, under dynamo's recompile limit


def seq_start_fits(block_size: int, seq_start: int) -> bool:
    """Whether a sequence-length warmup can double seq_start up to block_size (block_size/seq_start a power of two,
    at most MAX_SEQ_RATIO)."""
    ratio = block_size // seq_start if seq_start else 0
    return block_size % max(1, seq_start) == 0 and 0 < ratio <= MAX_SEQ_RATIO and ratio & (ratio - 1) == 0


def seq_len(step: int, block_size: int, seq_start: int, seq_warmup_iters: int) -> int:
    """The row length at step of a sequence-length warmup: seq_start, doubled at equal intervals so that it
    reaches block_size at step seq_warmup_iters (block_size with no warmup). Powers of two apart, so that a
    compiled model sees a few shapes only, and each length divides the rows the loader gives."""
    if not seq_warmup_iters or step >= seq_warmup_iters:
        return block_size
    doublings = (block_size // seq_start).bit_length() - 1
    return seq_start << (step * doublings // seq_warmup_iters)


def attn_window(step: int, window: int, window_start: int, window_warmup_iters: int) -> int:
    """The short-window layers' window at step: grows linearly from window_start at step 0 to window at step
    window_warmup_iters, then stays (modded-nanogpt grows its window during training); window from the start
    when window_warmup_iters is 0. A function of the step alone, so a resumed run continues it exactly."""
    if not window_warmup_iters or step >= window_warmup_iters:
        return window
    return round(window_start + (window - window_start) * step / window_warmup_iters)
