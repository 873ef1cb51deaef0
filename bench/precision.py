"""Precision on this CPU: the chunked loss in bf16 against fp32, and Muon's Newton-Schulz dtype in the step time
of the modern recipe against GPT-2's.

    python bench/precision.py                                   # both parts, at the sizes below
    python bench/precision.py --part=loss --n_embd=768          # the loss at GPT-2 small's width
    python bench/precision.py --part=step --timing_steps=10

loss: the training loss alone (lm_head + cross-entropy in chunks, forward and backward) on random hidden
states, in fp32 and under bf16 autocast, their speed and the difference of the loss values. step: one
training step (forward, backward, clip, optimizer) of GPT-2's recipe and of the modern one with the
Newton-Schulz iteration in fp32 and in bf16, one step of each in turn (the same machine load for all),
at bench/recipe.py's shape. Every line says what the CPU is (torch.backends.cpu.get_cpu_capability() and
whether it has bf16 instructions), since that decides which dtype is faster.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/, for recipe.py's recipes

import torch  # noqa: E402

import recipe  # noqa: E402
from configurator import key, run_main  # noqa: E402
from fineweb_gpt import hardware  # noqa: E402
from fineweb_gpt.optimizer import make_optimizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from train import model_config, optimizer_settings  # noqa: E402


@dataclass
class PrecisionBenchConfig:
    part: str = key("both", "'loss', 'step' or 'both'", choices=("loss", "step", "both"))
    loss_rows: int = key(4096, "loss: positions (rows of hidden states)", range="[1, inf)")
    n_embd: int = key(256, "loss: width of the hidden states", range="[1, inf)")
    vocab_size: int = key(50304, "loss: vocabulary", range="[1, inf)")
    loss_steps: int = key(5, "loss: timed forward + backward passes per dtype, after 2 untimed", range="[1, inf)")
    n_layer: int = key(4, "step: transformer blocks", range="[1, inf)")
    step_embd: int = key(256, "step: embedding width", range="[1, inf)")
    n_head: int = key(4, "step: attention heads", range="[1, inf)")
    block_size: int = key(256, "step: context length", range="[1, inf)")
    batch_size: int = key(8, "step: sequences per step", range="[1, inf)")
    timing_steps: int = key(5, "step: timed steps per variant, after 2 untimed rounds", range="[1, inf)")
    seed: int = key(1337, "seed", range="[0, inf)")


def loss_part(b: PrecisionBenchConfig) -> dict:
    """ms per forward + backward of the chunked loss, and its value, in fp32 and under bf16 autocast."""
    torch.manual_seed(b.seed)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=b.n_embd, vocab_size=b.vocab_size, block_size=8,
                          tie_embeddings=False)).train()
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    x = torch.randn(1, b.loss_rows, b.n_embd)
    targets = torch.randint(b.vocab_size, (1, b.loss_rows))
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        times = []
        for i in range(b.loss_steps + 2):
            h = x.clone().requires_grad_()
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = model.chunked_cross_entropy(h, targets)
            loss.backward()
            if i >= 2:
                times.append((time.perf_counter() - t) * 1000)
        results[name] = {"ms": statistics.median(times), "loss": loss.item()}
    fp32 = results["fp32"]
    print(f"chunked loss, {b.loss_rows:,} positions x {b.n_embd} x {b.vocab_size:,}, forward + backward "
          f"({hardware.describe_cpu_bf16()}, {torch.get_num_threads()} threads):")
    print("| dtype | ms | speed vs fp32 | loss | loss - fp32 loss |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ms']:,.0f} | {fp32['ms'] / r['ms']:.2f}x | {r['loss']:.4f} | "
              f"{r['loss'] - fp32['loss']:+.4f} |")
    return results


def step_part(b: PrecisionBenchConfig) -> dict:
    """Median ms per training step of gpt2, and of modern with Newton-Schulz in fp32 and in bf16."""
    rb = recipe.RecipeBenchConfig(n_layer=b.n_layer, n_head=b.n_head, n_embd=b.step_embd, block_size=b.block_size,
                                  batch_size=b.batch_size, seed=b.seed)
    variants = {"gpt2": ("gpt2", "float32"), "modern, NS fp32": ("modern", "float32"),
                "modern, NS bf16": ("modern", "bfloat16")}
    steppers = {}
    for name, (which, ns_dtype) in variants.items():
        cfg = recipe.run_config(rb, which, 0.01, "", "")
        cfg.muon_ns_dtype = ns_dtype
        torch.manual_seed(b.seed)
        model = GPT(model_config(cfg)).train()
        steppers[name] = (model, make_optimizer(model, optimizer_settings(cfg))[0])
    x = torch.randint(0, 50257, (b.batch_size, b.block_size + 1))
    times = {name: [] for name in steppers}
    opt_times = {name: [] for name in steppers}
    for i in range(b.timing_steps + 2):
        for name, (model, optimizer) in steppers.items():
            t = time.perf_counter()
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            t_opt = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append((time.perf_counter() - t) * 1000)
                opt_times[name].append((time.perf_counter() - t_opt) * 1000)
    ms = {name: statistics.median(v) for name, v in times.items()}
    print(f"training step, {b.n_layer} layers x {b.step_embd}, {b.batch_size} x {b.block_size} tokens, fp32 "
          f"model ({hardware.describe_cpu_bf16()}, {torch.get_num_threads()} threads):")
    print("| recipe | ms/step | vs GPT-2 | of which optimizer step |\n|---|---|---|---|")
    for name in steppers:
        print(f"| {name} | {ms[name]:,.0f} | {ms[name] / ms['gpt2']:.2f}x | {statistics.median(opt_times[name]):,.0f} |")
    return ms


def main(b: PrecisionBenchConfig) -> dict:
    out = {}
    if b.part in ("loss", "both"):
        out["loss"] = loss_part(b)
    if b.part in ("step", "both"):
        out["step"] = step_part(b)
    return out


if __name__ == "__main__":
    run_main(PrecisionBenchConfig, "bench/precision.py", main)
