"""The depth dial's rules, the depth=auto choice (injected speeds, no timing) and the clock-driven schedule."""
import pytest

from configurator import ConfigError
from fineweb_gpt.plan import (REFERENCE_BATCH, BudgetSchedule, DepthCandidate, batch_for_horizon, choose_depth,
                              parse_duration, shape_for_depth)


@pytest.mark.parametrize("text, seconds", [("8h", 28800), ("90m", 5400), ("2h30m", 9000), ("1.5h", 5400),
                                           ("45s", 45), ("1h0m30s", 3630), (" 3M ", 180)])
def test_durations_people_write(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "8", "h", "30m2h", "-1h", "0m", "eight hours"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ConfigError, match="time_budget"):
        parse_duration(text)


def test_depth_12_is_gpt2_small():
    assert shape_for_depth(12) == {"n_layer": 12, "n_embd": 768, "n_head": 12}
    assert shape_for_depth(4) == {"n_layer": 4, "n_embd": 256, "n_head": 4}


def test_batch_grows_slower_than_the_horizon():
    ref = 2_000_000_000
    assert batch_for_horizon(ref, ref) == REFERENCE_BATCH
    assert batch_for_horizon(8 * ref, ref) == 2 * REFERENCE_BATCH      # 8^0.383 = 2.2 -> nearest power of two
    assert batch_for_horizon(ref // 64, ref) == REFERENCE_BATCH // 4   # 64^-0.383 = 0.20 -> 1/4


def speeds(tok_per_s: dict[int, float], budget_s: float) -> list[DepthCandidate]:
    """Candidates with GPT-2-like parameter counts (12 * d * (64d)^2 + 50304 * 64d) and the given speeds."""
    return [DepthCandidate(d, 12 * d * (64 * d) ** 2 + 50304 * 64 * d, s, budget_s) for d, s in tok_per_s.items()]


def test_a_longer_budget_picks_a_deeper_model():
    measured = {2: 400_000.0, 4: 200_000.0, 6: 120_000.0, 8: 80_000.0, 12: 40_000.0}  # tokens/s, deeper is slower
    short, long_ = choose_depth(speeds(measured, 600)), choose_depth(speeds(measured, 8 * 3600))
    assert long_.depth > short.depth
    assert long_.fits and short.fits
    for chosen, budget in ((short, 600), (long_, 8 * 3600)):  # nothing deeper that was measured would have fit
        assert all(not c.fits for c in speeds(measured, budget) if c.depth > chosen.depth)


def test_nothing_fits_picks_the_smallest():
    chosen = choose_depth(speeds({4: 10.0, 8: 5.0}, 60))
    assert chosen.depth == 4 and not chosen.fits


def run(schedule: BudgetSchedule, step_s: float, final_s: float, slow_from: int | None = None):
    """Drive the schedule with a fake clock; returns the lrs of the updates and the elapsed time at the end."""
    elapsed, lrs, step = 0.0, [], 0
    while True:
        pace = step_s * (3 if slow_from is not None and step >= slow_from else 1)
        d = schedule.decide(step, elapsed, pace, final_s)
        if d.last_step:
            return lrs, elapsed + final_s
        lrs.append(d.lr)
        elapsed += pace
        step += 1


def test_budget_ends_inside_it_with_the_cooldown_done():
    lrs, end = run(BudgetSchedule(100.0, 1e-2, 1e-3, warmup_iters=5, cooldown_frac=0.2), step_s=0.5, final_s=2.0)
    assert 100.0 - 0.5 <= end <= 100.0
    assert lrs[-1] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-2)
    cooldown = [i for i, lr in enumerate(lrs) if i > 5 and lr < 1e-2]
    assert len(cooldown) == pytest.approx(0.2 * 100 / 0.5, abs=5)  # about cooldown_frac of the budget
    assert all(a >= b for a, b in zip(lrs[cooldown[0]:], lrs[cooldown[0] + 1:]))  # never rises again


def test_a_slower_stretch_moves_the_end_not_past_the_budget():
    lrs, end = run(BudgetSchedule(100.0, 1e-2, 1e-3, 5, 0.2), step_s=0.5, final_s=2.0, slow_from=170)
    assert end <= 100.0 and lrs[-1] == pytest.approx(1e-3)


def test_resumed_schedule_continues_from_its_state():
    whole = BudgetSchedule(100.0, 1e-2, 1e-3, 5, 0.2)
    first = [whole.decide(s, s * 0.5, 0.5, 2.0).lr for s in range(190)]
    # a second schedule built from the first one's saved state, continuing at step 170
    again = BudgetSchedule(100.0, 1e-2, 1e-3, 5, 0.2)
    for s in range(170):
        again.decide(s, s * 0.5, 0.5, 2.0)
    resumed = BudgetSchedule(100.0, 1e-2, 1e-3, 5, 0.2, state=type(again.state)(**vars(again.state)))
    assert [resumed.decide(s, s * 0.5, 0.5, 2.0).lr for s in range(170, 190)] == first[170:]
    fresh = BudgetSchedule(100.0, 1e-2, 1e-3, 5, 0.2)  # without the saved state the cooldown starts over
    assert [fresh.decide(s, s * 0.5, 0.5, 2.0).lr for s in range(170, 190)] != first[170:]
