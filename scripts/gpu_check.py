"""Prove a GPU run in minutes: data, training with batch_size=auto and compile, eval, sampling, export.

    python scripts/gpu_check.py                       # downloads one FineWeb file (or --input=local parquet)
    bash scripts/gpu_check.sh --input='~/fineweb/*.parquet'

On a CUDA machine it prepares a small slice of FineWeb, trains config/train_fineweb.py and
config/train_gpt2.py for a few dozen steps each (batch_size=auto, torch.compile, the GPU's own dtype),
then samples from each checkpoint, exports it and loads the export in transformers (its logits must equal
ours). It prints one markdown table, also written to work_dir/gpu_check.md, for docs/benchmarks.md:
GPU, chosen micro-batch, tokens/s, MFU, peak memory, compile time, graph breaks, first and last training
loss and val bits per byte. Any error stops it with its traceback; a graph break, a loss that is not
finite or does not fall also make it exit non-zero (after the table). Without a GPU it says so and exits 1.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "data", "fineweb"))

import torch  # noqa: E402

from configurator import cli, key  # noqa: E402
from fineweb_gpt import hardware  # noqa: E402
from fineweb_gpt.errors import UserError  # noqa: E402
from fineweb_gpt.runlog import METRICS, read_metrics  # noqa: E402


@dataclass
class GPUCheckConfig:
    input: str = key("", "parquet files or globs of FineWeb text ('' = download prepare.py's default file)")
    max_docs: int = key(20000, "documents to tokenize (about 20M tokens at the default)", range="[1, inf)")
    work_dir: str = key("gpu-check", "data, runs, exports and gpu_check.md go here (runs are replaced)")
    configs: str = key("config/train_fineweb.py,config/train_gpt2.py", "configs to train, comma-separated")
    max_iters: int = key(40, "training steps per config", range="[2, inf)")
    total_batch_size: int = key(65536, "tokens per update (smaller than the configs' 524,288, so the check is quick; "
                                "speed and memory per micro-batch do not depend on it)", range="[1, inf)")
    train_args: str = key("", "more train.py keys for every config, space-separated (e.g. '--n_layer=2')")
    device: str = key("cuda", "'cuda' (a GPU check); 'cpu' runs the pipeline without one (tests only)",
                      choices=("cuda", "cpu"))
    compile: bool = key(True, "torch.compile the training model, as the configs do on a GPU")


class NoGPU(UserError):
    """This machine has no GPU that torch can use: nothing to check."""


def require_gpu(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        why = hardware.unseen_gpu() or f"torch {torch.__version__} sees no CUDA GPU on this machine"
        raise NoGPU(f"gpu_check: no GPU to check: {why}. Run it on a machine with an NVIDIA GPU.")


def prepare_data(c: GPUCheckConfig) -> str:
    import prepare
    out = os.path.join(c.work_dir, "data")
    args = [f"--out_dir={out}", f"--max_docs={c.max_docs}", "--val_tokens=300000", "--progress=False"]
    prepare.main(args + ([f"--input={c.input}"] if c.input else []))
    return out


def train_config(c: GPUCheckConfig, path: str, data_dir: str) -> dict:
    """Train one config; its row of the table (from metrics.jsonl, the checkpoint and dynamo's counters)."""
    import train
    from configurator import parse_config
    import torch._dynamo.utils as dynamo_utils
    name = os.path.splitext(os.path.basename(path))[0]
    out_dir = os.path.join(c.work_dir, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    dynamo_utils.compilation_time_metrics.clear()
    args = [os.path.join(ROOT, path), f"--data_dir={data_dir}", f"--out_dir={out_dir}", "--batch_size=auto",
            f"--total_batch_size={c.total_batch_size}", f"--max_iters={c.max_iters}", "--warmup_iters=10",
            f"--eval_interval={c.max_iters}", "--eval_iters=10", "--log_interval=1", f"--device={c.device}",
            f"--compile={c.compile}", "--init_from=scratch",
            "--window_warmup_iters=0",  # the full window from step 0: the speed of the run's steady state
            *c.train_args.split()]
    t = time.time()
    summary = train.train(parse_config(train.TrainConfig, args))
    wall = time.time() - t
    rows = read_metrics(os.path.join(out_dir, METRICS))
    steps = [r for r in rows if "loss" in r]
    later = steps[len(steps) // 2:]  # after compile and warm-up
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=True)
    mfus = [r["mfu"] for r in later if r.get("mfu") is not None]
    return {"config": name, "out_dir": out_dir, "micro_batch": ckpt["loop"]["auto_batch_size"],
            "tok_per_s": statistics.median(r["tok_per_s"] for r in later),
            "mfu": statistics.median(mfus) if mfus else None,
            "peak_mem_gib": max((r["peak_mem_gib"] or 0.0) for r in steps),
            "compile_s": dynamo_utils.calculate_time_spent().get("total_wall_time", 0.0),
            "graphs": dynamo_utils.counters["stats"]["unique_graphs"],
            "graph_breaks": sum(dynamo_utils.counters["graph_break"].values()),
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
            "val_bpb": next((r["val_bpb"] for r in reversed(rows) if "val_bpb" in r), None),
            "val_loss": summary["val_loss"], "wall_s": wall}


def sample_and_export(c: GPUCheckConfig, row: dict) -> None:
    """Sample from the checkpoint, export it, load the export in transformers and compare its logits with ours."""
    import export
    import sample
    from configurator import parse_config
    from fineweb_gpt.checkpoint import load_model
    texts = sample.sample(parse_config(sample.SampleConfig, [f"--out_dir={row['out_dir']}", f"--device={c.device}",
                                                             "--num_samples=2", "--max_new_tokens=32",
                                                             "--start=The", "--stream=False"]))
    if len(texts) != 2:
        raise RuntimeError(f"sample.py returned {len(texts)} samples, not 2")
    hf_dir = os.path.join(c.work_dir, f"hf-{row['config']}")
    export.main([f"--out_dir={row['out_dir']}", f"--hf_dir={hf_dir}", "--overwrite=True", "--tokenizer_files=False"])
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, trust_remote_code=True).eval()  # our own code for the modern configs
    ours, _ = load_model(os.path.join(row["out_dir"], "ckpt.pt"))
    length = min(64, ours.config.block_size)
    idx = torch.randint(0, 50257, (2, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # on CPU in fp32: no TF32, so the two implementations agree closely
        theirs = hf(idx).logits
        mine = ours.eval()(idx)[0][..., :theirs.size(-1)]
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=1e-4)
    row["export"] = type(hf).__name__


def table(rows: list[dict], device: str) -> str:
    name = hardware.device_name(device)
    lines = [f"GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{time.strftime('%Y-%m-%d')}; each config {rows[0]['steps']} steps of {rows[0]['tokens']:,} tokens",
             "",
             "| GPU | config | micro-batch | tokens/s | MFU | peak memory | compile s (probe incl.) | graphs / breaks | first loss "
             "| last loss | val bpb | export |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        bpb = f"{r['val_bpb']:.4f}" if r["val_bpb"] is not None else "n/a"
        lines.append(f"| {name} | {r['config']} | {r['micro_batch']} | {r['tok_per_s']:,.0f} | {mfu} | "
                     f"{r['peak_mem_gib']:.2f} GiB | {r['compile_s']:.1f} | {r['graphs']} / {r['graph_breaks']} | "
                     f"{r['first_loss']:.4f} | {r['last_loss']:.4f} | {bpb} | {r.get('export', '-')} |")
    return "\n".join(lines)


def problems(rows: list[dict], compiled: bool) -> list[str]:
    found = []
    for r in rows:
        if compiled and r["graph_breaks"]:
            found.append(f"{r['config']}: {r['graph_breaks']} graph break(s) in the compiled training step")
        if not (torch.isfinite(torch.tensor([r["first_loss"], r["last_loss"]])).all() and r["last_loss"] < r["first_loss"]):
            found.append(f"{r['config']}: training loss went from {r['first_loss']} to {r['last_loss']}")
    return found


def run(c: GPUCheckConfig) -> int:
    require_gpu(c.device)
    t0 = time.time()
    data_dir = prepare_data(c)
    rows = []
    for path in [p.strip() for p in c.configs.split(",") if p.strip()]:
        row = train_config(c, path, data_dir)
        sample_and_export(c, row)
        row.update(steps=c.max_iters, tokens=c.total_batch_size)
        rows.append(row)
    report = table(rows, c.device)
    with open(os.path.join(c.work_dir, "gpu_check.md"), "w") as f:
        f.write(report + "\n")
    print("\n" + report + f"\n\n(whole check: {time.time() - t0:.0f} s; add the table to docs/benchmarks.md)")
    found = problems(rows, c.compile)
    for p in found:
        print(f"gpu_check: FAILED: {p}", file=sys.stderr)
    return 1 if found else 0


def main(argv: list[str] | None = None) -> None:
    c = cli(GPUCheckConfig, "gpu_check.py", argv)
    try:
        sys.exit(run(c))
    except UserError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
