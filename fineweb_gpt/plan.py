"""Planning a run: the depth dial, the token horizon, and a wall-clock time budget.

One dial, `depth`, sets the model's shape and the settings that scale with it, by these rules:
- width: n_embd = depth * 64 and heads of 64 dimensions (n_head = depth). nanochat's `base_train.py` uses
  this aspect ratio of 64; a head size of 64 is GPT-2's, so depth=12 is exactly GPT-2 small's shape.
- token horizon: TOKENS_PER_PARAM tokens per parameter, the compute-optimal ratio of Hoffmann et al. 2022
  ("Chinchilla", arXiv 2203.15556: about 20 tokens per parameter, e.g. 70B parameters on 1.4T tokens).
- batch: the compute-optimal batch grows as tokens^0.383 (Bergsma et al. 2025, "Power Lines", arXiv
  2505.13738, as nanochat applies it), from 2^19 tokens at depth 12's horizon (nanoGPT's and nanochat's
  GPT-2-small batch), rounded to a power of two; every learning rate is scaled by sqrt(batch / 2^19)
  (the square-root rule for Adam; nanochat applies it to Muon as well).
Any of these keys set explicitly (config file or command line) wins over the dial.

A time budget (`time_budget=8h`) replaces max_iters with the clock: the run keeps the warmup-stable-decay
schedule's constant rate until only cooldown_frac of the budget is left (as the measured pace says), then
cools down to min_lr so that the last update, the last eval and the last checkpoint end inside the budget.
The pace is re-measured every step, so a slower or faster stretch moves the end, never past the budget.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from configurator import ConfigError, explicit_keys
from fineweb_gpt import schedule
from fineweb_gpt.batch import resolve_batch
from fineweb_gpt.report import duration
from fineweb_gpt.runlog import eta, short_count
from model import count_params

TOKENS_PER_PARAM = 20.0   # Hoffmann et al. 2022 (Chinchilla)
ASPECT_RATIO = 64         # n_embd per layer (nanochat)
HEAD_SIZE = 64            # GPT-2's head size
REFERENCE_DEPTH = 12      # GPT-2 small: where the reference batch below was tuned
REFERENCE_BATCH = 2 ** 19  # tokens per update at the reference depth (nanoGPT, nanochat)
BATCH_EXPONENT = 0.383    # optimal batch ~ tokens^0.383 (Power Lines, arXiv 2505.13738)
COOLDOWN_SLACK = 2        # a budgeted cooldown reaches min_lr this many updates before the planned last one

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in '8h', '90m', '2h30m', '1.5h', '45s' (hours, minutes, seconds in that order)."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise ConfigError(f"time_budget={text!r} is not a duration: write it as 8h, 90m, 2h30m or 45s")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"time_budget={text!r} is no time at all: give a positive duration such as 90m")
    return total


def shape_for_depth(depth: int) -> dict[str, int]:
    """The model keys the depth dial sets."""
    return {"n_layer": depth, "n_embd": depth * ASPECT_RATIO, "n_head": depth * ASPECT_RATIO // HEAD_SIZE}


def horizon_tokens(params: int, tokens_per_param: float = TOKENS_PER_PARAM) -> int:
    """Compute-optimal training tokens for a model of `params` parameters."""
    return int(tokens_per_param * params)


def batch_for_horizon(tokens: int, reference_tokens: int) -> int:
    """Tokens per update for a run of `tokens` tokens: REFERENCE_BATCH at the reference horizon, growing as
    tokens^BATCH_EXPONENT, rounded to a power of two."""
    predicted = REFERENCE_BATCH * (tokens / reference_tokens) ** BATCH_EXPONENT
    return 2 ** round(math.log2(predicted))


def lr_scale_for_batch(total_batch_size: int) -> float:
    """Learning rates are stated for REFERENCE_BATCH tokens per update; sqrt(B / B_ref) rescales them."""
    return (total_batch_size / REFERENCE_BATCH) ** 0.5


@dataclass
class DepthCandidate:
    """One row of the depth=auto table: a measured speed and what the budget buys at it."""
    depth: int
    params: int
    tok_per_s: float
    budget_s: float
    tokens_per_param: float = TOKENS_PER_PARAM

    @property
    def tokens_needed(self) -> int:
        return horizon_tokens(self.params, self.tokens_per_param)

    @property
    def tokens_in_budget(self) -> int:
        return int(self.tok_per_s * self.budget_s)

    @property
    def fits(self) -> bool:
        return self.tokens_in_budget >= self.tokens_needed


def choose_depth(candidates: list[DepthCandidate]) -> DepthCandidate:
    """The deepest candidate whose compute-optimal token count fits the budget at its measured speed; the
    shallowest one if none fits (the run then trains it on fewer tokens than optimal)."""
    fitting = [c for c in candidates if c.fits]
    return max(fitting, key=lambda c: c.depth) if fitting else min(candidates, key=lambda c: c.depth)


def depth_table(candidates: list[DepthCandidate], chosen: DepthCandidate) -> str:
    """The table depth=auto chose from, one line per measured depth."""
    lines = [f"{'depth':>5} {'params':>9} {'tok/s':>9} {'tokens in budget':>17} {'tokens needed':>14}  fits"]
    for c in sorted(candidates, key=lambda c: c.depth):
        lines.append(f"{c.depth:>5} {c.params / 1e6:>8.1f}M {c.tok_per_s:>9,.0f} {c.tokens_in_budget:>17,} "
                     f"{c.tokens_needed:>14,}  {'yes' if c.fits else 'no'}{'  <- chosen' if c is chosen else ''}")
    return "\n".join(lines)


@dataclass
class BudgetState:
    """What the budgeted schedule carries between steps (and in the checkpoint, for resume)."""
    cooling: bool = False      # the cooldown has started
    lr: float | None = None    # the main group's rate at the previous update, once cooling


@dataclass
class BudgetDecision:
    lr: float
    last_step: bool      # stop now: evaluate and save, no update at this step
    updates_left: int    # the pace's estimate, including this step's update


class BudgetSchedule:
    """Warmup-stable-decay driven by the clock instead of a step count.

    At each step the caller passes the run's elapsed seconds, the seconds one update takes now (recent steps,
    evals amortised) and the seconds the final eval and checkpoint take. The cooldown starts when the time left
    for updates is cooldown_frac of the budget or less; each cooldown step moves the rate a share of the way to
    min_lr, 1 / (updates left - COOLDOWN_SLACK), so it reaches min_lr whatever the pace does meanwhile."""

    def __init__(self, budget_s: float, learning_rate: float, min_lr: float, warmup_iters: int,
                 cooldown_frac: float, state: BudgetState | None = None):
        self.budget_s, self.learning_rate, self.min_lr = budget_s, learning_rate, min_lr
        self.warmup_iters, self.cooldown_frac = warmup_iters, cooldown_frac
        self.state = state or BudgetState()

    def decide(self, step: int, elapsed_s: float, step_s: float | None, final_s: float) -> BudgetDecision:
        """step_s None: no update timed yet in this process (its first step compiles); the rate keeps its course."""
        time_left = self.budget_s - elapsed_s - final_s  # for updates, after keeping the final eval and save
        if step_s is None:
            lr = self.state.lr if self.state.cooling else self._warm_lr(step)
            return BudgetDecision(lr, time_left <= 0, 0)
        updates_left = max(0, math.floor(time_left / step_s))
        if updates_left == 0:
            return BudgetDecision(self.state.lr if self.state.lr is not None else self.min_lr, True, 0)
        if not self.state.cooling and time_left <= self.cooldown_frac * self.budget_s:
            self.state.cooling = True
            self.state.lr = self._warm_lr(step)
        if not self.state.cooling:
            return BudgetDecision(self._warm_lr(step), False, updates_left)
        # min_lr is reached with COOLDOWN_SLACK updates still in hand, so a step slower than the pace (which can
        # end the run an update or two sooner than planned) still ends at min_lr
        self.state.lr -= (self.state.lr - self.min_lr) / max(1, updates_left - COOLDOWN_SLACK)
        return BudgetDecision(self.state.lr, False, updates_left)

    def _warm_lr(self, step: int) -> float:
        return schedule.warmup_lr(step, self.learning_rate, self.warmup_iters) if step < self.warmup_iters \
            else self.learning_rate


def measure_tokens_per_s(model, optimizer, amp, device: str, batch_size: int, block_size: int, steps: int) -> float:
    """Training tokens per second of one process: `steps` full updates (forward, backward, optimizer step) on
    random tokens after one untimed update (which compiles, where compiled)."""
    import time

    import torch

    from fineweb_gpt import hardware
    x = torch.randint(0, model.config.vocab_size, (batch_size, block_size), device=device)
    for i in range(steps + 1):
        if i == 1:
            hardware.synchronize(device)
            start = time.time()
        with amp:
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    hardware.synchronize(device)
    return steps * batch_size * block_size / (time.time() - start)


def dial(cfg, depth: int, world_size: int, model_config: Callable) -> tuple[Any, list[str]]:
    """cfg (train.py's TrainConfig) with the keys the depth dial sets, those not set explicitly, and what it
    set, in words. model_config turns a config into the GPTConfig it describes."""
    explicit = explicit_keys(cfg)
    shape = {k: v for k, v in shape_for_depth(depth).items() if k not in explicit}
    out = replace(cfg, depth=depth, **shape)
    # each value-embedding table feeds one of the first and one of the last layers: the dial's depth caps them
    if "n_layer" in shape and 2 * out.value_embeds > out.n_layer:
        shape["value_embeds"] = out.n_layer // 2
        out = replace(out, value_embeds=shape["value_embeds"])
    params = count_params(model_config(out))["total"]
    tokens = horizon_tokens(params, cfg.tokens_per_param)
    notes = [", ".join(f"{k}={v}" for k, v in shape.items()) or "shape set explicitly",
             f"{params / 1e6:.1f}M parameters, compute-optimal {tokens:,} tokens ({cfg.tokens_per_param:g} per parameter)"]
    if not explicit & {"total_batch_size", "gradient_accumulation_steps"}:
        reference = count_params(model_config(replace(out, **shape_for_depth(REFERENCE_DEPTH))))["total"]
        unit = cfg.block_size * world_size * (cfg.batch_size if cfg.batch_size != "auto" else 1)
        batch = batch_for_horizon(tokens, horizon_tokens(reference, cfg.tokens_per_param))
        batch = max(1, round(batch / unit)) * unit  # a whole number of micro-batches on every process
        scale = lr_scale_for_batch(batch)
        lrs = [k for k in ("learning_rate", "embedding_lr", "head_lr", "scalar_lr") if k not in explicit]
        lrs += ["min_lr"] if "learning_rate" in lrs and "min_lr" not in explicit else []
        out = replace(out, total_batch_size=batch, **{k: getattr(cfg, k) * scale for k in lrs})
        notes.append(f"{batch:,} tokens per update" + (f", learning rates x{scale:.3g} ({', '.join(lrs)})" if lrs else ""))
    if not cfg.time_budget and "max_iters" not in explicit:
        out = replace(out, max_iters=math.ceil(tokens / (out.total_batch_size or resolve_batch(out, world_size)[1])))
        notes.append(f"max_iters={out.max_iters:,}")
    out.explicit_keys = explicit
    return out, notes


class Horizon:
    """When the run ends and the learning rate at each step: max_iters and the lr schedule, or the clock
    (time_budget). The loop asks `at(step, ...)` and never which of the two it is."""

    def __init__(self, cfg, loop_state, env, clock, params: int, tokens_per_step: int,
                 tokens_before: Callable[[int], int] | None = None):
        self.cfg, self.loop_state, self.env, self.clock = cfg, loop_state, env, clock
        self.params, self.tokens_per_step = params, tokens_per_step
        # tokens of the updates before a step (a batch schedule trains fewer early on); else every update is full
        self.tokens_before = tokens_before or (lambda step: step * tokens_per_step)
        self.budget = None
        if cfg.time_budget:
            saved = BudgetState(**loop_state.budget) if loop_state.budget else None
            self.budget = BudgetSchedule(parse_duration(cfg.time_budget), cfg.learning_rate, cfg.min_lr,
                                         cfg.warmup_iters, cfg.cooldown_frac, saved)

    def at(self, step: int, step_times, eval_s: float) -> tuple[float, bool, bool]:
        """(lr, whether to stop now, whether this step's update is the last). With a budget every process
        takes the same decision from the same numbers (averaged over the processes), so all stop together."""
        if self.budget is None:
            return schedule.get_lr(step, self.cfg), step == self.cfg.max_iters, step == self.cfg.max_iters - 1
        import torch
        times = sorted(step_times)
        pace = times[len(times) // 2] + eval_s / self.cfg.eval_interval if times else 0.0  # evals amortised
        due = eval_s if step % self.cfg.eval_interval == 0 else 0.0  # this step's own eval, about to run
        numbers = torch.tensor([self.clock.elapsed() + due, pace, eval_s], device=self.env.device)
        elapsed, pace, eval_s = self.env.all_mean(numbers).tolist()
        decision = self.budget.decide(step, elapsed, pace if times else None, eval_s)
        self.loop_state.budget = asdict(self.budget.state)
        if len(times) == 5 and not decision.last_step:  # once the pace is known: the plan in steps and tokens
            self.env.print0(self.describe(pace, decision.updates_left))
        return decision.lr, decision.last_step, decision.updates_left == 1

    def time_left(self, step: int, step_times) -> str:
        """The log line's ETA: to max_iters at the recent pace, or to the end of the budget."""
        if self.budget is None:
            return eta(list(step_times), self.cfg.max_iters - step - 1)
        return duration(self.budget.budget_s - self.clock.elapsed())

    def describe(self, pace: float | None = None, updates_left: int | None = None) -> str:
        """The run's plan in one line: steps, tokens, tokens per parameter and when it ends."""
        cfg, per_update = self.cfg, self.tokens_per_step
        if not cfg.time_budget:
            tokens = self.tokens_before(cfg.max_iters)
            up_to = "up to " if tokens < cfg.max_iters * per_update else ""  # a batch warmup's updates are smaller
            return (f"plan: {cfg.max_iters:,} steps x {up_to}{per_update:,} tokens = {short_count(tokens)} tokens, "
                    f"{tokens / self.params:.2f} per parameter ({self.params / 1e6:.1f}M parameters)")
        budget = parse_duration(cfg.time_budget)
        now = datetime.datetime.now()
        end = now + datetime.timedelta(seconds=budget - self.clock.elapsed())
        end = f"{end:%H:%M:%S}" if end.date() == now.date() else f"{end:%Y-%m-%d %H:%M}"
        if pace is None:
            return (f"plan: train for {duration(budget)} in all ({duration(self.clock.elapsed())} spent), ending by "
                    f"{end} with the cooldown over the last {cfg.cooldown_frac:.0%}; steps and tokens "
                    f"follow from the pace, measured over the first updates")
        return (f"plan: at {pace:.3g} s per update, about {updates_left:,} more updates = "
                f"{short_count(updates_left * per_update)} more tokens ({self.params / 1e6:.1f}M parameters), "
                f"ending by {end}")
