"""GPT-2's recipe against the modern one, on the same data, model shape and token budget.

    python bench/recipe.py --data_dir=data/fineweb                       # 4 layers x 256, T=256, 2,048 tokens/step, 60 steps
    python bench/recipe.py --data_dir=data/fineweb --batch_size=16 --max_iters=100 --variants=relu2,softcap
    python bench/recipe.py --train_runs=False                            # only the time per step of each recipe

Trains every recipe at each of its learning rates with train.py's own loop, then prints, per recipe, the
learning rate chosen, the val loss at equal tokens and the tokens it needed to reach the tuned GPT-2
recipe's final val loss; and the time per training step of each recipe (and of its optimizer step alone),
measured with their steps interleaved so that all see the same machine load. --reuse=True keeps runs that
finished with the same config, so a wider sweep trains only what is new.

The val split is cut in two: learning rates are chosen on the first half ("select"), every reported
loss is measured on the second ("report"), so the reported numbers were not tuned on. The curves use
eval_iters batches of the report half; the final losses of both halves, measured once on each run's last
checkpoint, use final_eval_iters (set it to what a half holds for the least noisy choice).
Results go to out_dir/results.json; each run's metrics.jsonl lies in out_dir/<recipe>-lr<lr>/
(python plot.py draws them).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root, when run as bench/recipe.py

import numpy as np
import torch

from fineweb_gpt import hardware
from fineweb_gpt.atomic import atomic_write, write_json
from fineweb_gpt.checkpoint import load_checkpoint
from configurator import ConfigError, key, run_main
from fineweb_gpt.dataloader import ValSet, find_shards, header_for, open_shard
from fineweb_gpt.inference import load_for_inference
from model import GPT, count_params
from fineweb_gpt.optimizer import make_optimizer
from fineweb_gpt.runlog import METRICS, read_metrics
from train import TrainConfig, check_config, check_flex_attention, model_config, optimizer_settings, train

# Each recipe's keys; the learning rate (of the block matrices) is swept. "modern" is what config/train_fineweb.py
# trained before the record line's options: SwiGLU, so that it exports to transformers' Qwen3ForCausalLM.
MODERN = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False, logit_softcap=0.0,
              zero_init_proj=True, bias=False, optimizer="muon", lr_schedule="wsd", cooldown_frac=0.4,
              weight_decay=0.0, beta1=0.8, beta2=0.95)
GPT2 = dict(optimizer="adamw", lr_schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.95)
RECIPES = ("gpt2", "modern")  # "modern" is MODERN with the options of --base


@dataclass(frozen=True)
class Share:
    """A key's value as a share of one of the benchmark's settings (max_iters: a schedule's length; block_size:
    a window or a row length), filled in by run_config, so that an option means the same at every --max_iters
    and --block_size."""
    share: float
    of: str

    def value(self, b: RecipeBenchConfig) -> int:
        return max(1, round(self.share * getattr(b, self.of)))


WHOLE_RUN = Share(1.0, "max_iters")
# Options of the modern recipe: a variant is one of them or several joined by "+" (--variants=ve,unet,ve+unet),
# trained on top of the base recipe. Settings are for the benchmark's shape (4 layers, 245 steps).
OPTIONS = {
    "relu2": dict(mlp="relu2"),                       # modded-nanogpt's MLP in place of SwiGLU
    "softcap": dict(logit_softcap=15.0),              # modded-nanogpt's cap, applied inside the chunked loss
    "ve": dict(value_embeds=2),                       # 2 tables: layers 0, 1 and 2, 3 of the 4
    "lambdas": dict(x0_lambdas=True),
    "unet": dict(unet_skips=True),
    "init": dict(init="nanochat"),                    # nanochat's initial scales
    "momentum_warmup": dict(muon_momentum_warmup=40),  # 0.85 -> 0.95 over the first 16% (modded: 300 of ~1,800 steps)
    "polar_express": dict(muon_ns="polar_express"),
    "normuon": dict(muon_normuon=True),
    "cautious_wd": dict(muon_cautious_wd=True, weight_decay=0.2),  # needs a decay; nanochat's Muon decay is 0.2
    # document-aligned rows, document-causal attention, sliding windows, batch-size warmup: for rows of 2K+
    # tokens that hold several documents (the window grows over the whole run, as modded-nanogpt's)
    "doc_align": dict(doc_align="bestfit"),
    "doc_causal": dict(doc_causal=True),
    "window": dict(attn_window=Share(1 / 4, "block_size"), window_pattern="SSSL",  # 512 of 2,048, from 128
                   window_start=Share(1 / 16, "block_size"), window_warmup_iters=WHOLE_RUN),
    # at --accumulation=2: 1 micro-step per update over the first ninth of the run, then 2
    "batch_warmup": dict(batch_warmup_iters=Share(1 / 3, "max_iters"), batch_start_frac=0.25),
    # rows of a quarter of the row at first, then half, then whole, over the first third of the run
    "seq_warmup": dict(seq_warmup_iters=Share(1 / 3, "max_iters"), seq_start=Share(1 / 4, "block_size")),
}


def parse_options(text: str, what: str) -> list[str]:
    """The option names of a "+"-joined set; an unknown name is a ConfigError that lists the known ones."""
    names = [v.strip() for v in text.split("+") if v.strip()]
    unknown = [v for v in names if v not in OPTIONS]
    if unknown:
        raise ConfigError(f"{what}: unknown {unknown}; choose from {list(OPTIONS)}")
    return names


def recipe_keys(recipe: str, base: str = "") -> dict:
    """The TrainConfig keys of a recipe: gpt2, modern (with the base options), or a variant (base + its options)."""
    if recipe == "gpt2":
        return GPT2
    keys = dict(MODERN)
    for name in parse_options(base, "base") + ([] if recipe == "modern" else parse_options(recipe, "variants")):
        keys.update(OPTIONS[name])
    return keys


@dataclass
class RecipeBenchConfig:
    data_dir: str = key("data/fineweb", "prepared shards; the val split is cut into a select half and a report half")
    out_dir: str = key("bench-recipe", "run directories and results.json")
    n_layer: int = key(4, "transformer blocks", range="[1, inf)")
    n_head: int = key(4, "attention heads", range="[1, inf)")
    n_embd: int = key(256, "embedding width", range="[1, inf)")
    block_size: int = key(256, "context length", range="[1, inf)")
    batch_size: int = key(8, "sequences per micro-step", range="[1, inf)")
    accumulation: int = key(1, "micro-steps per step (tokens per step = batch_size * block_size * accumulation)",
                            range="[1, inf)")
    max_iters: int = key(60, "steps per run (the token budget)", range="[1, inf)")
    warmup_iters: int = key(10, "warmup steps of every recipe", range="[0, inf)")
    eval_interval: int = key(10, "evaluate on the report half every this many steps", range="[1, inf)")
    eval_iters: int = key(4, "batches per evaluation, on each half", range="[1, inf)")
    final_eval_iters: int = key(0, "batches of each half for the final select and report losses, measured once per "
                                "run on the last checkpoint (0 = eval_iters); more batches, less noise in the choice "
                                "and in the final column", range="[0, inf)")
    gpt2_lrs: str = key("5e-4,1e-3,2e-3,4e-3", "AdamW learning rates tried for the GPT-2 recipe")
    modern_lrs: str = key("0.02", "Muon learning rates tried for the modern recipe")
    base: str = key("", "options of the modern recipe that every variant builds on, joined by '+' ('' = none)")
    variants: str = key("relu2", "variants of the modern recipe to train, comma-separated; each an option or options "
                        "joined by '+' ('' = none)")
    variant_lrs: str = key("", "Muon learning rates of the variants ('' = the modern recipe's choice)")
    train_runs: bool = key(True, "train and compare the recipes; False = only time their steps")
    reuse: bool = key(False, "keep runs of out_dir that finished with the same config instead of training them again")
    timing_steps: int = key(10, "interleaved timed steps per recipe for the time-per-step ratio (0 = skip)",
                            range="[0, inf)")
    report: bool = key(True, "compare and time the recipes after training; False = only train the runs (to spread "
                       "them over processes that share out_dir: each trains different variants, then one reports)")
    memory: bool = key(True, "measure each chosen recipe's peak RSS over three training steps, each in its own process")
    device: str = key("cpu", "device to train on")
    dtype: str = key("float32", "autocast dtype (bfloat16 is faster only on CPUs with avx512_bf16 or amx)", choices=hardware.DTYPES)
    seed: int = key(1337, "seed of every run (same initial data order)", range="[0, inf)")


def split_val(data_dir: str, work_dir: str) -> dict[str, str]:
    """Two data folders sharing the train shards, each with half of the val tokens: {'select': ..., 'report': ...}."""
    val = np.concatenate([np.asarray(open_shard(p)) for p in find_shards(data_dir, "val")])
    half = len(val) // 2
    folders = {}
    for name, tokens in (("select", val[:half]), ("report", val[half:])):
        folder = os.path.join(work_dir, f"data-{name}")
        os.makedirs(folder, exist_ok=True)
        with atomic_write(os.path.join(folder, "bench_val_000000.bin"), "wb") as f:
            f.write(header_for(tokens.dtype, len(tokens)).tobytes())
            f.write(tokens.tobytes())
        for path in find_shards(data_dir, "train") + [os.path.join(data_dir, "meta.json")]:
            link = os.path.join(folder, os.path.basename(path))
            if os.path.exists(path) and not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
        folders[name] = folder
    return folders


def check_val_halves(b: RecipeBenchConfig, data: dict[str, str]) -> None:
    """Each half of val holds the batches that the curves (eval_iters) and the final losses (final_eval_iters)
    read: said before any training, not when the first run's final loss is measured."""
    for half in ("select", "report"):
        fits = ValSet(data[half], b.batch_size, b.block_size, 1).windows.total // b.batch_size
        for name in ("eval_iters", "final_eval_iters"):
            if getattr(b, name) > fits:
                raise ConfigError(f"{name}={getattr(b, name)}: the {half} half of val holds {fits} batches of "
                                  f"{b.batch_size} rows of {b.block_size + 1} tokens; set {name} to at most {fits}, "
                                  f"or prepare a larger val split (prepare.py --val_tokens)")


def run_config(b: RecipeBenchConfig, recipe: str, lr: float, data_dir: str, out_dir: str) -> TrainConfig:
    keys = {k: v.value(b) if isinstance(v, Share) else v for k, v in recipe_keys(recipe, b.base).items()}
    min_lr = 0.0 if keys["lr_schedule"] == "wsd" else lr / 10  # WSD cools down to zero
    return TrainConfig(out_dir=out_dir, data_dir=data_dir, n_layer=b.n_layer, n_head=b.n_head, n_embd=b.n_embd,
                       block_size=b.block_size, batch_size=b.batch_size, gradient_accumulation_steps=b.accumulation,
                       max_iters=b.max_iters, warmup_iters=b.warmup_iters, eval_interval=b.eval_interval,
                       eval_iters=b.eval_iters, log_interval=1, learning_rate=lr, min_lr=min_lr, device=b.device,
                       dtype=b.dtype, compile=False, seed=b.seed, always_save_checkpoint=False, **keys)


@torch.no_grad()
def val_loss(model: GPT, val_set: ValSet, amp) -> float:
    model.eval()
    losses = []
    for x, y in val_set.batches():
        with amp:
            losses.append(model(x, y)[1].item())
    return sum(losses) / len(losses)


def train_run(b: RecipeBenchConfig, recipe: str, lr: float, data: dict[str, str]) -> dict:
    """Train one recipe at one learning rate; its report-half curve and the final losses of both halves, measured
    on its last checkpoint with final_eval_iters batches each."""
    out_dir = os.path.join(b.out_dir, f"{recipe}-lr{lr:g}")
    cfg = run_config(b, recipe, lr, data["report"], out_dir)
    t = time.time()
    if not (b.reuse and finished(out_dir, cfg)):
        shutil.rmtree(out_dir, ignore_errors=True)  # a rerun starts over
        with open(os.path.join(b.out_dir, f"{recipe}-lr{lr:g}.log"), "w") as log, contextlib.redirect_stdout(log):
            train(cfg)
    model = load_for_inference(out_dir).model
    amp = hardware.autocast(b.device, hardware.pick_dtype(b.dtype, b.device)[0])
    rows = read_metrics(os.path.join(out_dir, METRICS))
    curve = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    final = {half: val_loss(model.to(b.device), ValSet(data[half], b.batch_size, b.block_size,
                                                       b.final_eval_iters or b.eval_iters), amp)
             for half in ("select", "report")}
    result = {"recipe": recipe, "lr": lr, "select_loss": final["select"], "report_loss": final["report"],
              "final_loss": curve[-1][1], "curve": curve, "wall_s": time.time() - t}
    print(f"{recipe:7s} lr {lr:<8g} select {result['select_loss']:.4f} | report {result['report_loss']:.4f} "
          f"(curve's end {result['final_loss']:.4f}) | {result['wall_s']:.0f} s", flush=True)
    return result


def finished(out_dir: str, cfg: TrainConfig) -> bool:
    """A run of exactly this config that reached its last step (its checkpoint says so)."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        return False
    ckpt = load_checkpoint(path)
    defaults = asdict(TrainConfig())  # a key train.py gained since that run counts at its default
    return ckpt["loop"]["step"] == cfg.max_iters and {**defaults, **ckpt["config"]} == asdict(cfg)


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Tokens at which the curve first reaches target, interpolated linearly between evaluations."""
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if l1 <= target:
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1) if l0 > target else t0
    return None


def time_steps(b: RecipeBenchConfig, chosen: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per training step of each recipe, and of its optimizer step alone, one step of each recipe in
    turn (same load for all)."""
    device, (dtype, _) = b.device, hardware.pick_dtype(b.dtype, b.device)
    amp = hardware.autocast(device, dtype)
    steppers = {}
    for recipe, result in chosen.items():
        cfg = run_config(b, recipe, result["lr"], "", "")
        torch.manual_seed(b.seed)
        model = GPT(model_config(cfg)).to(device).train()
        check_flex_attention(model, dtype, device)
        optimizer, _ = make_optimizer(model, optimizer_settings(cfg))
        steppers[recipe] = (model, optimizer)
    x = torch.randint(0, 50257, (b.batch_size, b.block_size + 1), device=device)

    def step(model, optimizer) -> float:
        """One training step; returns the seconds its optimizer step took."""
        with amp:
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        hardware.synchronize(device)
        t = time.perf_counter()
        optimizer.step()
        hardware.synchronize(device)
        t_opt = time.perf_counter() - t
        optimizer.zero_grad(set_to_none=True)
        return t_opt

    times = {recipe: [] for recipe in steppers}
    opt_times = {recipe: [] for recipe in steppers}
    for i in range(b.timing_steps + 2):  # two untimed warm-up rounds
        for recipe, (model, optimizer) in steppers.items():
            t = time.perf_counter()
            t_opt = step(model, optimizer)
            if i >= 2:
                times[recipe].append((time.perf_counter() - t) * 1000)
                opt_times[recipe].append(t_opt * 1000)
    median = lambda d: {recipe: statistics.median(ts) for recipe, ts in d.items()}  # noqa: E731
    return median(times), median(opt_times)


def parse_lrs(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"learning rates must be comma-separated numbers, got {text!r}") from None


def parse_variants(text: str) -> list[str]:
    variants = [v.strip() for v in text.split(",") if v.strip()]
    for v in variants:
        parse_options(v, "variants")
    return variants


def timed_recipes(b: RecipeBenchConfig) -> list[str]:
    return [*RECIPES, *parse_variants(b.variants)]


def time_only(b: RecipeBenchConfig) -> dict[str, float]:
    ms, opt_ms = time_steps(b, {recipe: {"lr": 0.01} for recipe in timed_recipes(b)})  # the lr does not change the time
    for recipe, t in ms.items():
        print(f"{recipe:8s} {t:7.0f} ms/step  {t / ms['gpt2']:.2f}x GPT-2's  (optimizer step {opt_ms[recipe]:.0f} ms)",
              flush=True)
    return ms


PEAK_RSS_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_recipe", sys.argv[1])
bench = sys.modules["bench_recipe"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
bench.time_steps(bench.RecipeBenchConfig(**json.loads(sys.argv[2])), {sys.argv[3]: {"lr": 0.01}})
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def peak_rss_gib(b: RecipeBenchConfig, recipe: str) -> float:
    """Peak RSS (GiB) of a fresh process that builds the recipe's model and optimizer and takes three training
    steps at the benchmark's shape (python and torch included): its own process, so no other recipe counts. Its
    VmHWM (Linux), not getrusage's ru_maxrss, which a child inherits from the parent that forked it."""
    settings = json.dumps({**asdict(b), "timing_steps": 1})  # time_steps' two warm-up steps and one timed
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD, os.path.abspath(__file__), settings, recipe],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measuring {recipe}'s peak memory failed:\n{out.stderr}")
    return int(out.stdout.split()[-1]) / 2**20  # KiB


def compare(b: RecipeBenchConfig) -> dict:
    """Train and time the recipes as b says; returns what results.json holds."""
    if not b.train_runs:
        return time_only(b)
    os.makedirs(b.out_dir, exist_ok=True)
    data = split_val(b.data_dir, b.out_dir)
    check_val_halves(b, data)
    for recipe in timed_recipes(b):  # a variant's bad keys (a share that rounds badly) before any run trains
        check_config(run_config(b, recipe, 0.01, data["report"], b.out_dir))
    tokens_per_step = b.batch_size * b.block_size * b.accumulation
    print(f"{b.n_layer} layers x {b.n_embd} wide, context {b.block_size}, {tokens_per_step:,} tokens/step, "
          f"{b.max_iters} steps = {b.max_iters * tokens_per_step:,} tokens per run, {b.dtype} on {b.device}, "
          f"base options: {b.base or 'none'}; CPU capability {torch.backends.cpu.get_cpu_capability()}", flush=True)
    runs = [train_run(b, "modern", lr, data) for lr in parse_lrs(b.modern_lrs)]
    runs += [train_run(b, "gpt2", lr, data) for lr in parse_lrs(b.gpt2_lrs)]
    best = lambda recipe: min((r for r in runs if r["recipe"] == recipe), key=lambda r: r["select_loss"])  # noqa: E731
    for variant in parse_variants(b.variants):
        runs += [train_run(b, variant, lr, data) for lr in parse_lrs(b.variant_lrs) or [best("modern")["lr"]]]
    if not b.report:
        return {"runs": runs}
    chosen = {recipe: best(recipe) for recipe in dict.fromkeys(r["recipe"] for r in runs)}
    chosen = {"gpt2": chosen.pop("gpt2"), **chosen}
    target = chosen["gpt2"]["final_loss"]
    gpt2_tokens = tokens_to_reach(chosen["gpt2"]["curve"], target)
    # every recipe is timed (the learning rate does not change the time), trained or not
    ms, opt_ms = time_steps(b, {recipe: chosen.get(recipe, {"lr": 0.01}) for recipe in timed_recipes(b)}) \
        if b.timing_steps else ({}, {})
    final_tokens = (b.final_eval_iters or b.eval_iters) * b.batch_size * b.block_size
    print(f"\nchosen on the select half; losses on the report half; target = GPT-2 recipe's final val {target:.4f} "
          f"(its curve's end); the halves at end: {final_tokens:,} tokens each")
    print("| recipe | lr | report half at end | select half at end | tokens to reach target | vs GPT-2 | ms/step "
          "| vs GPT-2 | optimizer ms | params | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe, r in chosen.items():
        reach = tokens_to_reach(r["curve"], target)
        r["tokens_to_target"], r["ms_per_step"] = reach, ms.get(recipe)
        r["params"] = count_params(model_config(run_config(b, recipe, r["lr"], "", "")))["total"]
        r["peak_rss_gib"] = peak_rss_gib(b, recipe) if b.memory else None
        reach_text = f"{reach:,.0f} | {reach / gpt2_tokens:.2f}x" if reach is not None else "not reached | -"
        time_text = f"{ms[recipe]:.0f} | {ms[recipe] / ms['gpt2']:.2f}x | {opt_ms[recipe]:.0f}" if ms else "- | - | -"
        rss_text = f"{r['peak_rss_gib']:.2f}" if r["peak_rss_gib"] is not None else "-"
        print(f"| {recipe} | {r['lr']:g} | {r['report_loss']:.4f} | {r['select_loss']:.4f} | {reach_text} | "
              f"{time_text} | {r['params'] / 1e6:.2f}M | {rss_text} |", flush=True)
    for recipe in (r for r in ms if r not in chosen):
        print(f"| {recipe} | not trained | - | - | - | - | {ms[recipe]:.0f} | {ms[recipe] / ms['gpt2']:.2f}x | "
              f"{opt_ms[recipe]:.0f} | - | - |")
    print("\nval loss (report half) at each evaluation (tokens: the GPT-2 run's):")
    steps = [t for t, _ in chosen["gpt2"]["curve"]]
    print("tokens   " + " ".join(f"{recipe:>8s}" for recipe in chosen))
    for i, tokens in enumerate(steps):
        print(f"{tokens:<8,d} " + " ".join(f"{r['curve'][i][1]:8.4f}" if i < len(r["curve"]) else f"{'-':>8s}"
                                           for r in chosen.values()))
    results = {"config": asdict(b), "runs": runs, "chosen": {k: v["lr"] for k, v in chosen.items()},
               "target": target, "ms_per_step": ms, "optimizer_ms_per_step": opt_ms, "threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    write_json(os.path.join(b.out_dir, "results.json"), results)
    return results


def main(argv: list[str] | None = None) -> None:
    run_main(RecipeBenchConfig, "bench/recipe.py", compare, argv)


if __name__ == "__main__":
    main()
