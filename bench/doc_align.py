"""What each doc_align mode keeps of the train split: tokens never seen in an epoch and documents cut.

    python bench/doc_align.py --data_dir=data/fineweb
    python bench/doc_align.py --data_dir=data/fineweb --block_sizes=1024 --speed_s=5

For each block size and each mode ('off': windows at fixed offsets; 'crop': a row from each document's
start, running on across the following documents; 'bestfit': whole documents packed best-fit, one cropped
per row) it plans the rows exactly as train.py's loader does and prints a markdown table:
- discarded: train tokens that no row holds (never an input or a target in an epoch)
- cut: documents that no single row holds whole (split across rows, or partly discarded)
- dropped: documents no row holds any token of
- plan s: the time to plan the rows when the loader opens the data
- batches/s: next_batch() at --batch_size rows (measured for --speed_s seconds; 0 = skip)
A document here is what a row can begin with: an eot and the text after it up to the next eot (plus, in
prepare.py's layout, each shard's first document, which no eot precedes, so that no doc-aligned row holds it).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # run as a script: the repository root holds configurator.py and fineweb_gpt/
from configurator import key, run_main  # noqa: E402
from fineweb_gpt.dataloader import DOC_ALIGNS, TrainLoader, eot_positions  # noqa: E402


@dataclass
class BenchDocAlignConfig:
    data_dir: str = key(os.path.join(ROOT, "data", "fineweb"), "a folder of shards prepared by data/fineweb/prepare.py")
    block_sizes: str = key("256,1024,2048,4096", "comma-separated block sizes (tokens per row)")
    eot_token: int = key(50256, "the end-of-text token between documents", range="[0, inf)")
    batch_size: int = key(16, "rows per batch for the loader's speed", range="[1, inf)")
    speed_s: float = key(0.0, "seconds to time next_batch() per setting (0 = skip)", range="[0, inf)")


@dataclass
class Kept:
    tokens: int = 0
    discarded: int = 0
    docs: int = 0
    cut: int = 0
    dropped: int = 0

    def add(self, other: "Kept") -> None:
        for f in ("tokens", "discarded", "docs", "cut", "dropped"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


def shard_kept(shard: np.ndarray, starts: np.ndarray, ends: np.ndarray, eot: int) -> Kept:
    """Tokens and documents of one shard that the row stretches [starts, ends) hold."""
    n = len(shard)
    depth = np.zeros(n + 1, dtype=np.int64)  # rows covering each token: +1 at a start, -1 at an end
    np.add.at(depth, starts, 1)
    np.add.at(depth, ends, -1)
    covered = np.cumsum(depth[:-1]) > 0
    seen = np.concatenate([[0], np.cumsum(covered)])  # covered tokens before each position
    bounds = np.unique(np.concatenate([[0], eot_positions(shard, eot)]))
    doc_start, doc_end = bounds, np.append(bounds[1:], n)
    real = (doc_end - doc_start >= 2) | (shard[doc_start] != eot)  # a lone eot (a shard's last token) holds no text
    doc_start, doc_end = doc_start[real], doc_end[real]
    order = np.argsort(starts, kind="stable")
    s_sorted, reach = starts[order], np.maximum.accumulate(ends[order])  # furthest end of a row starting by here
    last = np.searchsorted(s_sorted, doc_start, side="right") - 1
    whole = (last >= 0) & (reach[np.maximum(last, 0)] >= doc_end)
    held = seen[doc_end] - seen[doc_start]
    return Kept(n, int(n - covered.sum()), len(doc_start), int(((held > 0) & ~whole).sum()), int((held == 0).sum()))


def measure(data_dir: str, block_size: int, mode: str, eot: int, batch_size: int, speed_s: float) -> dict:
    t = time.time()
    loader = TrainLoader(data_dir, batch_size, block_size, doc_align=mode, eot_token=eot)
    plan_s = time.time() - t
    rows = loader.windows
    shard_ids, starts, ends = rows.segments()
    kept = Kept()
    for s, shard in enumerate(rows.shards):
        mine = shard_ids == s
        kept.add(shard_kept(shard, starts[mine], ends[mine], eot))
    speed = None
    if speed_s:
        n, t = 0, time.time()
        while time.time() - t < speed_s:
            loader.next_batch()
            n += 1
        speed = n / (time.time() - t)
    return {"rows": rows.total, "kept": kept, "plan_s": plan_s, "batches_s": speed}


def run(cfg: BenchDocAlignConfig) -> list[dict]:
    sizes = [int(b) for b in cfg.block_sizes.split(",") if b.strip()]
    print("| block_size | doc_align | rows | discarded | documents cut | dropped | plan s | batches/s |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for T in sizes:
        for mode in DOC_ALIGNS:
            r = measure(cfg.data_dir, T, mode, cfg.eot_token, cfg.batch_size, cfg.speed_s)
            k = r["kept"]
            speed = f"{r['batches_s']:,.0f}" if r["batches_s"] is not None else "-"
            print(f"| {T} | {mode} | {r['rows']:,} | {k.discarded / k.tokens:.1%} | {k.cut:,} of {k.docs:,} "
                  f"({k.cut / k.docs:.1%}) | {k.dropped:,} | {r['plan_s']:.2f} | {speed} |", flush=True)
            results.append({"block_size": T, "doc_align": mode, **r})
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    return run_main(BenchDocAlignConfig, "bench/doc_align.py", run, argv)


if __name__ == "__main__":
    main()
