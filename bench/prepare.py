"""Benchmark the data pipeline: prepare.py vs raw tiktoken, peak memory, and loader speed.

    python bench/prepare.py --input=../shared/data/fineweb/fineweb_legal_pilot_batches --synthetic_gb=2

1. raw: tiktoken's encode_ordinary_batch on all cores over the input texts, already in memory
2. prepare.py on the input (a subprocess: wall time, its own tokens/s, peak RSS)
3. prepare.py on a synthetic parquet file of --synthetic_gb GB built from the input's documents
   (each copy prefixed with its index so no two documents are equal), same measurements
4. TrainLoader batches/s for B=16, T=1024 over the synthetic shards
Prints a markdown table to paste into docs/benchmarks.md.
"""
from __future__ import annotations

import glob
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run as a script: the repository root holds configurator.py and fineweb_gpt/
from configurator import key, run_main  # noqa: E402


@dataclass
class BenchPrepareConfig:
    input: str = key(os.path.join(ROOT, "..", "shared", "data", "fineweb", "fineweb_legal_pilot_batches"),
                     "a parquet file or a folder of them (a 'text' column)")
    synthetic_gb: float = key(2.0, "size of the synthetic parquet file built from the input (0 = skip)",
                              range="[0, inf)")
    rows_per_group: int = key(20000, "rows per row group of the synthetic file", range="[1, inf)")
    work_dir: str = key("", "where the outputs go ('' = a new temporary folder)")


def read_texts(inp: str) -> list[str]:
    import pyarrow.parquet as pq
    files = sorted(glob.glob(os.path.join(inp, "*.parquet"))) if os.path.isdir(inp) else [inp]
    return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]


def raw_tiktoken(texts: list[str]) -> float:
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    best = 0.0
    for _ in range(3):
        t = time.time()
        n = sum(len(x) for x in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count()))
        best = max(best, n / (time.time() - t))
    return best


def run_prepare(inp: str, out: str, *extra: str) -> dict:
    t = time.time()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "data", "fineweb", "prepare.py"), f"--input={inp}", f"--out_dir={out}",
                        "--progress=False", "--overwrite=True", *extra], capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode:
        sys.exit(r.stderr)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far: run small inputs first
    meta = json.load(open(os.path.join(out, "meta.json")))
    inner = float(re.search(r"= ([\d,]+) tokens/s", r.stdout).group(1).replace(",", ""))
    return {"tokens": meta["tokens"], "wall_s": wall, "tok_s_wall": meta["tokens"] / wall, "tok_s_inner": inner,
            "peak_rss_mib": peak_kib / 1024}


def build_synthetic(texts: list[str], path: str, gb: float, rows_per_group: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    if os.path.exists(path):
        os.remove(path)
    writer, i = None, 0
    try:
        while not os.path.exists(path) or os.path.getsize(path) < gb * 1e9:
            batch = [f"[copy {i + j}] {texts[(i + j) % len(texts)]}" for j in range(rows_per_group)]
            table = pa.table({"text": batch})
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=rows_per_group)
            i += rows_per_group
    finally:
        if writer:
            writer.close()
    return i


def loader_speed(data_dir: str, n: int = 300) -> float:
    from fineweb_gpt.dataloader import TrainLoader
    loader = TrainLoader(data_dir, 16, 1024, seed=0)
    loader.next_batch()
    t = time.time()
    for _ in range(n):
        loader.next_batch()
    return n / (time.time() - t)


def main(argv: list[str] | None = None) -> None:
    run_main(BenchPrepareConfig, "bench/prepare.py", bench, argv)


def bench(cfg: BenchPrepareConfig) -> None:
    inp, gb, rows = os.path.expanduser(cfg.input), cfg.synthetic_gb, cfg.rows_per_group
    work = cfg.work_dir or tempfile.mkdtemp(prefix="bench_prepare_")
    texts = read_texts(inp)
    print(f"cores: {os.cpu_count()}; input: {len(texts)} documents from {inp}", flush=True)
    raw = raw_tiktoken(texts)
    print(f"raw encode_ordinary_batch: {raw:,.0f} tokens/s", flush=True)
    small = run_prepare(inp, os.path.join(work, "small"), "--val_tokens=100000")
    print(f"prepare.py on the input: {small}", flush=True)
    rows_out = [("input sample", small)]
    if gb > 0:
        synth = os.path.join(work, "synthetic.parquet")
        t = time.time()
        docs = build_synthetic(texts, synth, gb, rows)
        print(f"built {synth}: {os.path.getsize(synth) / 1e9:.2f} GB, {docs:,} documents, {rows} rows per row group, "
              f"in {time.time() - t:.0f}s", flush=True)
        big = run_prepare(synth, os.path.join(work, "big"), "--val_tokens=10000000")
        print(f"prepare.py on the synthetic file: {big}", flush=True)
        rows_out.append((f"synthetic {os.path.getsize(synth) / 1e9:.2f} GB parquet", big))
        print(f"loader B=16 T=1024: {loader_speed(os.path.join(work, 'big')):,.1f} batches/s", flush=True)
    else:
        print(f"loader B=16 T=1024: {loader_speed(os.path.join(work, 'small')):,.1f} batches/s", flush=True)
    print("\n| input | tokens | prepare.py tokens/s (in-run) | vs raw tiktoken | wall s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in rows_out:
        print(f"| {name} | {r['tokens']:,} | {r['tok_s_inner']:,.0f} | {r['tok_s_inner'] / raw:.0%} | "
              f"{r['wall_s']:.1f} | {r['peak_rss_mib']:,.0f} |")
    print(f"\nraw tiktoken encode_ordinary_batch ({os.cpu_count()} threads, texts in memory): {raw:,.0f} tokens/s")


if __name__ == "__main__":
    main()
