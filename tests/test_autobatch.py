"""batch_size=auto: the micro-batch search, exercised on CPU with real training steps of a tiny GPT and the
out-of-memory condition injected mid-step above a size threshold (this machine has no GPU; the CUDA path
runs the same search with the same step, under a memory cap instead of the injected threshold)."""
import copy

import pytest
import torch

from fineweb_gpt import autobatch
import train
from configurator import ConfigError
from fineweb_gpt.activation_checkpointing import is_checkpointed
from fineweb_gpt.distributed import Env
from conftest import metrics, run_train, tiny_model
from fineweb_gpt.optimizer import OptimizerSettings, make_optimizer

BLOCK = 16


def out_of_memory_above(model, threshold: int):
    """Make the last block raise the allocator's error for micro-batches above threshold, as a GPU would
    midway through a forward pass: the earlier blocks' activations already exist when it is raised."""
    def hook(module, args):
        if args[0].size(0) > threshold:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected above {threshold} sequences)")
    return model.transformer.h[-1].register_forward_pre_hook(hook)


def model_and_optimizer(name="adamw", dropout=0.1):
    model = tiny_model(dropout=dropout).train()
    optimizer, _ = make_optimizer(model, OptimizerSettings(name, learning_rate=1e-2))
    return model, optimizer


def train_steps(model, optimizer, steps=2, seed=1):
    tokens = torch.randint(256, (4, BLOCK + 1), generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def tensors(state) -> list:
    """Every tensor in a nested optimizer state dict, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    items = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return [t for item in items for t in tensors(item)]


def probe(model, optimizer, threshold, sequences):
    handle = out_of_memory_above(model, threshold)
    try:
        with autobatch.restored_afterwards(model, optimizer):
            step = autobatch.training_step(model, optimizer, torch.autocast("cpu", enabled=False), BLOCK)
            return autobatch.find_batch_size(step, autobatch.divisors(sequences))
    finally:
        handle.remove()


@pytest.mark.parametrize("threshold, tried, chosen", [
    (13, [(1, True), (2, True), (4, True), (8, True), (16, False), (12, True)], 12),  # doubling, then bisection
    (100, [(1, True), (2, True), (4, True), (8, True), (16, True), (24, True), (48, True)], 48),  # all fit
    (5, [(1, True), (2, True), (4, True), (8, False), (6, False)], 4),
])
def test_search_doubles_then_bisects_to_the_largest_divisor_that_fits(threshold, tried, chosen):
    model, optimizer = model_and_optimizer()
    result = probe(model, optimizer, threshold, sequences=48)
    assert result.tried == tried and result.batch_size == chosen
    assert all(48 % b == 0 for b, _ in result.tried)  # only sizes that split the update into whole micro-steps
    assert result.describe().startswith("1 fits, 2 fits, 4 fits, 8 ")


def test_nothing_fits_is_reported_and_other_errors_are_not_taken_for_out_of_memory():
    model, optimizer = model_and_optimizer()
    assert probe(model, optimizer, threshold=0, sequences=8).batch_size is None

    def broken(size):
        raise ValueError("a bug, not a full GPU")
    with pytest.raises(ValueError, match="a bug"):
        autobatch.find_batch_size(broken, [1, 2])


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_probe_leaves_weights_optimizer_state_and_rng_as_they_were(name):
    # twins: one probes (steps at many sizes, some failing midway), the other does not; afterwards the
    # same training step (dropout on, so the RNG matters) must give bit-identical weights and state
    model, optimizer = model_and_optimizer(name)
    train_steps(model, optimizer)  # a resumed run: optimizer state present
    twin = copy.deepcopy(model)
    twin_optimizer, _ = make_optimizer(twin, OptimizerSettings(name, learning_rate=1e-2))
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    rng = torch.get_rng_state()

    result = probe(model, optimizer, threshold=5, sequences=16)
    assert result.batch_size == 4 and any(not ok for _, ok in result.tried)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    train_steps(model, optimizer, steps=1, seed=2)
    torch.set_rng_state(rng)
    train_steps(twin, twin_optimizer, steps=1, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    state, twin_state = tensors(optimizer.state_dict()), tensors(twin_optimizer.state_dict())
    assert len(state) == len(twin_state) > 0 and all(torch.equal(a, b) for a, b in zip(state, twin_state))


def test_probe_of_a_new_run_leaves_no_optimizer_state_behind():
    model, optimizer = model_and_optimizer()
    probe(model, optimizer, threshold=3, sequences=8)
    assert len(optimizer.state) == 0  # the probe's moments are freed; training allocates its own


def test_cpu_takes_a_fixed_size_that_divides_the_update_and_says_why():
    model, optimizer = model_and_optimizer()
    amp = torch.autocast("cpu", enabled=False)
    assert autobatch.choose_batch_size(model, optimizer, amp, "cpu", 1024, 512)[0] == 4
    size, how = autobatch.choose_batch_size(model, optimizer, amp, "cpu", 256, 24)
    assert size == 12 and "fixed on cpu" in how and "--batch_size=N" in how
    assert autobatch.largest_at_most(autobatch.divisors(30), 7) == 6


@pytest.mark.slow  # three training runs: in the full suite, out of the quick subset
def test_train_with_batch_size_auto_on_cpu_and_resume_keeps_the_stored_choice(synthetic_shards, tmp_path, capsys,
                                                                                monkeypatch):
    common = ["--batch_size=auto", "--total_batch_size=512", "--eval_interval=2"]  # 16 sequences of 32 tokens
    monkeypatch.setattr(autobatch, "FIXED_TOKENS", 128)  # a first run that settled on 4 sequences per micro-batch
    run_train(synthetic_shards, tmp_path, "--max_iters=2", *common)
    assert "batch: 512 tokens/update = 4 sequences x 32 tokens x 4 micro-steps" in capsys.readouterr().out
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["loop"]["auto_batch_size"] == 4 and saved["config"]["batch_size"] == 4

    monkeypatch.setattr(autobatch, "FIXED_TOKENS", 4096)  # a fresh choice would now be 16
    run_train(synthetic_shards, tmp_path, "--max_iters=4", "--init_from=resume", *common)
    out = capsys.readouterr().out
    assert "batch_size=auto: 4, chosen when the run started and stored in the checkpoint" in out
    assert "= 4 sequences x 32 tokens x 4 micro-steps" in out
    run_train(synthetic_shards, tmp_path, "--max_iters=6", "--init_from=resume", "--reprobe_batch_size=True", *common)
    assert "= 16 sequences x 32 tokens x 1 micro-step x" in capsys.readouterr().out
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["loop"]["auto_batch_size"] == 16


def test_val_batch_size_keeps_the_val_set_whatever_micro_batch_auto_picks(synthetic_shards, tmp_path, monkeypatch):
    def first_val_loss(fixed_tokens: int, run: str, *extra: str) -> float:
        monkeypatch.setattr(autobatch, "FIXED_TOKENS", fixed_tokens)  # stands in for two GPUs of different size
        run_train(synthetic_shards, tmp_path / run, "--max_iters=1", "--batch_size=auto", "--total_batch_size=512",
                  "--eval_iters=1", *extra)
        return next(r["val_loss"] for r in metrics(tmp_path / run) if "val_loss" in r)  # step 0: same weights

    assert first_val_loss(64, "a", "--val_batch_size=4") == first_val_loss(512, "b", "--val_batch_size=4")
    assert first_val_loss(64, "c") != first_val_loss(512, "d")  # 2 windows against 16


def test_batch_size_auto_needs_a_fixed_update_size(synthetic_shards, tmp_path):
    with pytest.raises(ConfigError, match="batch_size=auto needs total_batch_size"):
        run_train(synthetic_shards, tmp_path, "--batch_size=auto")
    with pytest.raises(ConfigError, match="total_batch_size=500 is not a multiple of block_size\\*processes=32\\*1=32; "
                                          "use total_batch_size=480 or total_batch_size=512"):
        run_train(synthetic_shards, tmp_path, "--batch_size=auto", "--total_batch_size=500")


def test_memory_options_reach_the_model(synthetic_shards, tmp_path, capsys):
    cfg = train.TrainConfig(chunked_loss=False, activation_checkpointing=True, logit_softcap=0.0)
    model = tiny_model()
    train.set_memory_options(model, cfg, Env("cpu"))
    assert not model.loss_chunked and all(is_checkpointed(block) for block in model.transformer.h)
    assert "chunked loss off, activation checkpointing on" in capsys.readouterr().out
    run_train(synthetic_shards, tmp_path, "--max_iters=1", "--activation_checkpointing=True", "--logit_softcap=15")
    assert "chunked loss on (softcapped, ours), activation checkpointing on" in capsys.readouterr().out


def test_the_memory_cap_follows_free_memory_not_the_total():
    from fineweb_gpt.autobatch import cap_fraction
    gib = 2**30
    # a 12 GiB card of which a display holds 1.5 GiB and this process 0.5 GiB: the cap is free + held - 10%
    assert cap_fraction(free=10 * gib, total=12 * gib, held=gib // 2, margin=0.1) == pytest.approx((10.5 - 1.2) / 12)
    assert cap_fraction(free=0, total=12 * gib, held=0, margin=0.1) == 0.01  # nothing fits: a sliver, not an error


def test_muon_steps_locally_during_the_probe():
    from conftest import OPTION_SETS, tiny_model
    from fineweb_gpt.autobatch import local_optimizer_steps
    from fineweb_gpt.optimizer import OptimizerSettings, make_optimizer
    optimizer, _ = make_optimizer(tiny_model(**OPTION_SETS["qwen3"]), OptimizerSettings("muon"))
    muon = optimizer.optimizers["muon"]
    muon.rank, muon.world_size = 1, 2  # as on the second of two ranks
    with local_optimizer_steps(optimizer):
        assert (muon.rank, muon.world_size) == (0, 1)
    assert (muon.rank, muon.world_size) == (1, 2)
