"""Optimizer contracts: every parameter in exactly one group, Muon only for block matrices, the schedules."""
import pytest
import torch

from conftest import OPTION_SETS
from conftest import tiny_model as tiny
from fineweb_gpt.optimizer import OptimizerSet, OptimizerSettings, make_optimizer, param_groups
from fineweb_gpt.schedule import get_lr, get_muon_momentum
from train import TrainConfig


@pytest.mark.parametrize("name", ["adamw", "muon"])
@pytest.mark.parametrize("options", OPTION_SETS)
def test_every_parameter_is_in_exactly_one_group(name, options):
    model = tiny(**OPTION_SETS[options])
    grouped = [p for g in param_groups(model, OptimizerSettings(name)) for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})  # none twice (a tied weight included)
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}  # none missing


@pytest.mark.parametrize("options", OPTION_SETS)
def test_muon_takes_the_block_matrices_and_adamw_the_rest(options):
    model = tiny(**OPTION_SETS[options])
    groups = {g["name"]: g for g in param_groups(model, OptimizerSettings("muon", embedding_lr=0.3, head_lr=0.004))}
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for p in groups["muon: block matrices"]["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert groups["adamw: output head"]["params"] == [model.lm_head.weight]  # when tied, also the embedding
    scale = (768 / 32) ** 0.5  # AdamW rates are stated at width 768
    assert groups["adamw: embeddings"]["lr"] == pytest.approx(0.3 * scale)
    assert groups["adamw: output head"]["lr"] == pytest.approx(0.004 * scale)
    assert all(p.dim() == 1 for p in groups["adamw: norms and biases"]["params"])


def test_muon_recipe_steps_both_optimizers_and_round_trips_its_state():
    model = tiny(**OPTION_SETS["modern"]).train()
    optimizer, lines = make_optimizer(model, OptimizerSettings("muon", learning_rate=0.02))
    assert isinstance(optimizer, OptimizerSet) and len(lines) == len(optimizer.param_groups)
    assert any("Muon" in line for line in lines) and any("AdamW" in line for line in lines)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 256, (2, 16))
    model(x, x)[1].backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "transformer.h.0.mlp.c_fc.weight" in moved and "lm_head.weight" in moved  # Muon's and AdamW's
    again, _ = make_optimizer(model, OptimizerSettings("muon", learning_rate=0.02))
    again.load_state_dict(optimizer.state_dict())
    assert torch.equal(again.optimizers["muon"].state_dict()["state"][0]["momentum_buffer"],
                       optimizer.optimizers["muon"].state_dict()["state"][0]["momentum_buffer"])


def test_muon_variants_reach_the_optimizer_and_its_line():
    model = tiny(**OPTION_SETS["modern"])
    plain, lines = make_optimizer(model, OptimizerSettings("muon"))
    group = plain.optimizers["muon"].param_groups[0]
    assert not group["normuon"] and not group["cautious_wd"] and group["ns_safety"] == 0.0
    assert "Muon (momentum 0.95, nesterov, Newton-Schulz" in lines[0]
    settings = OptimizerSettings("muon", muon_momentum_warmup=300, muon_ns="polar_express", muon_normuon=True,
                                 muon_cautious_wd=True)
    optimizer, lines = make_optimizer(model, settings)
    group = optimizer.optimizers["muon"].param_groups[0]
    assert group["normuon"] and group["cautious_wd"] and group["ns_safety"] == 0.02
    assert group["ns_coefficients"][0] == pytest.approx((8.1566, -22.4833, 15.8788), abs=1e-4)
    assert ("Muon (momentum 0.95 (from 0.85 over 300 steps), nesterov, Polar Express, NorMuon, cautious weight "
            "decay, Newton-Schulz") in lines[0]


def test_muon_momentum_warms_up_linearly_then_stays():
    cfg = TrainConfig(muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup=300)
    assert get_muon_momentum(0, cfg) == 0.85
    assert get_muon_momentum(150, cfg) == pytest.approx(0.90)
    assert all(get_muon_momentum(step, cfg) == 0.95 for step in (300, 301, 10_000))
    momenta = [get_muon_momentum(step, cfg) for step in range(301)]
    assert all(a < b for a, b in zip(momenta, momenta[1:]))
    off = TrainConfig(muon_momentum=0.9)  # muon_momentum_warmup=0: the constant momentum from step 0
    assert all(get_muon_momentum(step, off) == 0.9 for step in (0, 1, 500))


def test_wsd_is_warmup_then_constant_then_a_linear_cooldown():
    cfg = TrainConfig(lr_schedule="wsd", learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=100,
                      cooldown_frac=0.2)
    lrs = [get_lr(step, cfg) for step in range(101)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # warmup
    assert all(lr == 1.0 for lr in lrs[10:81])  # stable until the last 20 steps
    assert lrs[90] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)  # a straight line down to min_lr
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101]))


def test_cosine_reaches_min_lr_at_lr_decay_iters():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=0, max_iters=100, lr_decay_iters=50)
    assert get_lr(0, cfg) == 1.0 and get_lr(25, cfg) == pytest.approx(0.55) and get_lr(50, cfg) == get_lr(99, cfg) == 0.1
