"""Batch arithmetic: tokens per update, micro-batches per process, and batch_size=auto's choice.

Batch size is stated in tokens (total_batch_size); gradient accumulation is derived from it, and a
number that does not divide is explained with the numbers involved and the nearest ones that do.
"""
from __future__ import annotations

import math
from typing import Protocol

from configurator import ConfigError
from fineweb_gpt import autobatch
from fineweb_gpt.distributed import Env


class BatchKeys(Protocol):
    """The config keys the batch arithmetic reads (train.py's TrainConfig has them all)."""
    batch_size: int | str
    block_size: int
    total_batch_size: int
    gradient_accumulation_steps: int
    reprobe_batch_size: bool


def nearest_multiples(value: int, unit: int) -> list[int]:
    """The multiples of unit on either side of value (above 0): what to use instead of value."""
    below = value // unit
    return [k * unit for k in (below, below + 1) if k > 0]


def resolve_batch(cfg: BatchKeys, world_size: int) -> tuple[int, int]:
    """(micro-steps per rank, tokens per update), with each divisibility problem spelled out."""
    micro = cfg.batch_size * cfg.block_size  # tokens in one micro-batch of one rank
    accum = cfg.gradient_accumulation_steps
    if cfg.total_batch_size > 0:
        if cfg.total_batch_size % micro:
            fixes = [f"total_batch_size={n}" for n in nearest_multiples(cfg.total_batch_size, micro)]
            seqs, rem = divmod(cfg.total_batch_size, cfg.block_size)
            if not rem:  # or keep the total and pick a micro-batch that divides it
                below = [b for b in range(cfg.batch_size - 1, 0, -1) if seqs % b == 0][:1]
                above = [b for b in range(cfg.batch_size + 1, seqs + 1) if seqs % b == 0][:1]
                fixes += [f"batch_size={b}" for b in below + above]
            raise ConfigError(f"total_batch_size={cfg.total_batch_size} is not a multiple of batch_size*block_size="
                              f"{cfg.batch_size}*{cfg.block_size}={micro}; use " + " or ".join(fixes))
        derived = cfg.total_batch_size // micro
        if accum and accum != derived:
            raise ConfigError(f"gradient_accumulation_steps={accum} disagrees with total_batch_size={cfg.total_batch_size}"
                              f" / (batch_size*block_size={micro}) = {derived}; set only one of them")
        accum = derived
    accum = accum or world_size
    if accum % world_size:
        raise ConfigError(f"{accum} micro-batches per update do not split over {world_size} processes; use a "
                          f"multiple of {world_size} (e.g. {max(1, round(accum / world_size)) * world_size}) "
                          f"via gradient_accumulation_steps or total_batch_size")
    return accum // world_size, accum * micro


def auto_batch_size(cfg: BatchKeys, env: Env, model, optimizer, amp, stored: int | None) -> int:
    """batch_size=auto: on resume the checkpoint's choice (`stored`, unless reprobe_batch_size); else the
    largest micro-batch that fits (CUDA: probed with real training steps; CPU/MPS: a fixed size), the
    smallest over the processes. Always a divisor of the sequences each process trains per update."""
    group = cfg.block_size * env.world_size  # tokens of one sequence on every process
    sequences, rem = divmod(cfg.total_batch_size, group)
    if rem or not sequences:
        fixes = " or ".join(f"total_batch_size={n}" for n in nearest_multiples(cfg.total_batch_size, group))
        raise ConfigError(f"batch_size=auto: total_batch_size={cfg.total_batch_size} is not a multiple of "
                          f"block_size*processes={cfg.block_size}*{env.world_size}={group}; use {fixes}")
    if stored and not cfg.reprobe_batch_size:  # largest divisor up to it: the process count may have changed
        size = autobatch.largest_at_most(autobatch.divisors(sequences), stored)
        env.print0(f"batch_size=auto: {size}, chosen when the run started and stored in the checkpoint "
                   f"(--reprobe_batch_size=True probes again)")
        return size
    size, how = autobatch.choose_batch_size(model, optimizer, amp, env.device, cfg.block_size, sequences)
    sizes = env.gather(size)
    env.print0(f"batch_size=auto: {how}" + (f"; the processes found {sizes}: all use the smallest, {min(sizes)}"
                                            if len(set(sizes)) > 1 else ""))
    return min(sizes)


class BatchSchedule:
    """Tokens per update growing during training through the gradient accumulation count (so it works on one
    GPU and under DDP alike; modded-nanogpt's record line grows its batch during training too): micro-steps
    per process rise linearly from start_frac of the full count at step 0 to the full count at warmup_iters,
    in whole micro-steps (rounded up, at least one). warmup_iters=0: the full count from the start."""

    def __init__(self, accum_steps: int, tokens_per_micro: int, warmup_iters: int = 0, start_frac: float = 1.0):
        self.accum_steps, self.tokens_per_micro = accum_steps, tokens_per_micro  # micro: one micro-step, all processes
        self.warmup_iters, self.start_frac = warmup_iters, start_frac

    @property
    def tokens_per_step(self) -> int:
        """Tokens of a full update (after the warmup)."""
        return self.accum_steps * self.tokens_per_micro

    def accum_at(self, step: int) -> int:
        """Micro-steps per process in update `step`."""
        if step >= self.warmup_iters:
            return self.accum_steps
        frac = self.start_frac + (1.0 - self.start_frac) * step / self.warmup_iters
        return min(self.accum_steps, max(1, math.ceil(frac * self.accum_steps - 1e-9)))  # no float dust adds a step

    def tokens_at(self, step: int) -> int:
        """Tokens of update `step` over all processes."""
        return self.accum_at(step) * self.tokens_per_micro

    def tokens_before(self, step: int) -> int:
        """Tokens of updates 0 .. step-1: what a run has trained on when it reaches `step`."""
        ramp = min(step, self.warmup_iters)
        return sum(self.accum_at(s) for s in range(ramp)) * self.tokens_per_micro + (step - ramp) * self.tokens_per_step
