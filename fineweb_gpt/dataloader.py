"""Token shards on disk and the loaders that feed train.py.

Shard format (llm.c / modded-nanogpt): a header of 256 little-endian int32
(magic, version, token count, zeros), then the tokens.
  magic 20240520, version 1: uint16 tokens (GPT-2 and any vocabulary < 65536)
  magic 20240801, version 7: uint32 tokens (larger vocabularies, llm.c's llama-3 header)
The standard pre-tokenized FineWeb shards published for llm.c and modded-nanogpt read unchanged.
"""
from __future__ import annotations

import bisect
import glob
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fineweb_gpt.atomic import os_error_reason
from fineweb_gpt.errors import UserError
from fineweb_gpt import report

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = {  # (magic, version) -> token dtype
    (20240520, 1): np.dtype(np.uint16),
    (20240801, 7): np.dtype(np.uint32),
}
PREPARE_STATE = ".prepare_state.json"  # prepare.py's resume file; present without meta.json = unfinished
PREPARE_HINT = "re-run data/fineweb/prepare.py (the same command resumes; --overwrite starts over)"


class ShardError(UserError):
    """The data cannot serve this run: a shard is missing, truncated or in another format, a split is too
    small for the batch, or the data changed since the checkpoint."""


def header_for(dtype: np.dtype, num_tokens: int) -> np.ndarray:
    """The 256-int32 header for a shard of `num_tokens` tokens of `dtype`."""
    for (magic, version), dt in FORMATS.items():
        if dt == np.dtype(dtype):
            header = np.zeros(HEADER_INTS, dtype="<i4")
            header[0:3] = (magic, version, num_tokens)
            return header
    raise ValueError(f"no shard format stores {np.dtype(dtype)} tokens; use uint16 or uint32")


def read_header(path: str) -> tuple[np.dtype, int]:
    """Validate a shard's header against its size; return (token dtype, token count)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:  # the system refused (permissions, an I/O error): its words, not a guess at the data
        raise ShardError(f"cannot read shard {path}: {os_error_reason(e)}") from None
    header = np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<i4")
    if header.size < 3:
        raise ShardError(f"{path} is {size} bytes, too short for a shard header; {PREPARE_HINT}")
    magic, version, count = (int(v) for v in header[:3])
    dtype = FORMATS.get((magic, version))
    if dtype is None:
        raise ShardError(
            f"{path}: unknown shard header (magic {magic}, version {version}); expected one of "
            f"{sorted(FORMATS)} as written by prepare.py or llm.c. Is this a raw .bin from nanoGPT's "
            f"prepare.py (no header)? {PREPARE_HINT}")
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        raise ShardError(
            f"{path}: header says {count:,} tokens ({expected:,} bytes) but the file is {size:,} bytes; "
            f"the file is truncated or corrupt; {PREPARE_HINT}")
    return dtype, count


def open_shard(path: str) -> np.memmap:
    """Memory-map a shard's tokens after validating its header."""
    dtype, count = read_header(path)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def find_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of a split ('train' or 'val') in data_dir, with a clear error if none."""
    if not os.path.isdir(data_dir):
        raise ShardError(f"data directory {data_dir!r} does not exist; run data/fineweb/prepare.py "
                         f"--out_dir={data_dir} first, or set data_dir to where your shards are")
    state = os.path.join(data_dir, PREPARE_STATE)
    if os.path.exists(state) and not os.path.exists(os.path.join(data_dir, "meta.json")):
        raise ShardError(f"{data_dir}: prepare.py was interrupted before it finished; {PREPARE_HINT}")
    paths = sorted(glob.glob(os.path.join(data_dir, f"*_{split}_*.bin")))
    if not paths:
        raise ShardError(f"no {split} shards (*_{split}_*.bin) in {data_dir}; tokenize data into it first "
                         f"(python data/fineweb/prepare.py --out_dir={data_dir}), or set data_dir to where your shards are")
    return paths


def read_meta(data_dir: str) -> dict:
    """prepare.py's meta.json, or {} for shards from elsewhere (llm.c's are GPT-2 tokens)."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:  # the system refused: its words
        raise ShardError(f"cannot read {path} ({os_error_reason(e)})") from e
    except ValueError as e:  # cut short or not JSON: the data is bad, prepare.py writes it anew
        raise ShardError(f"cannot read {path} ({type(e).__name__}: {e}); {PREPARE_HINT}") from e


def check_token_ids(shards: list[np.memmap], vocab_size: int, split: str, sample_tokens: int = 0) -> None:
    """Refuse shards holding token ids the model has no embedding for (they would fail deep inside the
    first forward pass). Reads every token, or with sample_tokens evenly spaced chunks of about that
    many tokens per shard (cheap for a large train split)."""
    chunk = 4096
    for shard in shards:
        if not len(shard):
            continue
        if sample_tokens and len(shard) > sample_tokens:
            starts = np.linspace(0, len(shard) - chunk, num=max(1, sample_tokens // chunk), dtype=np.int64)
            highest = max(int(shard[a:a + chunk].max()) for a in starts)
        else:
            highest = int(shard.max())
        if highest >= vocab_size:
            raise ShardError(
                f"{shard.filename}: the {split} shards hold token id {highest}, but the model has only vocab_size="
                f"{vocab_size} embeddings: the shards were made with a larger vocabulary than the model's. A new "
                f"run can use --vocab_size={-(-(highest + 1) // 64) * 64} (the next multiple of 64); a resumed or "
                f"GPT-2-initialised model keeps its vocabulary and needs shards tokenized for it (prepare.py "
                f"records its tokenizer in meta.json)")


def shard_bytes(shard: np.ndarray, lengths: np.ndarray, chunk: int = 1 << 22) -> int:
    """Sum of lengths[token] over a shard, a chunk at a time (memory stays bounded for a large shard)."""
    return sum(int(lengths[shard[a:a + chunk]].sum()) for a in range(0, len(shard), chunk))


def to_device(x: np.ndarray, device: str) -> torch.Tensor:
    """int64 tensor on device; pinned + non_blocking on CUDA so the copy overlaps compute."""
    t = torch.from_numpy(x.astype(np.int64))
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class _Windows:
    """Non-overlapping windows of block_size+1 tokens over a list of memmapped shards."""
    shards: list[np.memmap]
    block_size: int

    def __post_init__(self):
        # window i of shard s covers tokens [i*T, i*T + T + 1): the target of the last position is the next token
        counts = [max(0, (len(s) - 1) // self.block_size) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total = int(self.starts[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        T = self.block_size
        out = np.empty((len(indices), T + 1), dtype=np.int64)
        shard_ids = np.searchsorted(self.starts, indices, side="right") - 1
        for row, (idx, s) in enumerate(zip(indices, shard_ids)):
            off = (int(idx) - int(self.starts[s])) * T
            out[row] = self.shards[s][off:off + T + 1]
        return out

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, start, end) of every window."""
        counts = np.diff(self.starts)
        shard = np.repeat(np.arange(len(self.shards)), counts)
        start = (np.arange(self.total) - np.repeat(self.starts[:-1], counts)) * self.block_size
        return shard, start, start + self.block_size + 1


DOC_ALIGNS = ("off", "bestfit", "crop")
BESTFIT_BUFFER = 1000  # documents the best-fit packer chooses from: more wastes less, costs more time to plan


def eot_positions(shard: np.ndarray, eot: int, chunk: int = 1 << 24) -> np.ndarray:
    """Positions (int64, ascending) of the eot token in a shard, a chunk at a time so that memory stays
    bounded for a large shard."""
    parts = [np.flatnonzero(shard[a:a + chunk] == eot) + a for a in range(0, len(shard), chunk)]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def document_spans(shard: np.ndarray, eot: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents a row can begin with: each span runs from an eot to the next eot
    (exclusive) or the shard's end, so it opens with the boundary token and holds the document after it.
    prepare.py writes eot after each document, llm.c's shards before it: either way every document but
    a shard's first (prepare.py's layout) follows an eot. A lone eot at a shard's end holds no document."""
    starts = eot_positions(shard, eot)
    ends = np.append(starts[1:], len(shard))
    keep = ends - starts >= 2
    return starts[keep], ends[keep]


def crop_row_starts(starts: np.ndarray, shard_len: int, block_size: int) -> np.ndarray:
    """modded-nanogpt's BOS-aligned rows: a row takes block_size+1 tokens from a document's start, across
    the documents that follow; the next row opens at the first document starting at or after the row's
    last token (that token, a target here, may be the next row's first input), the cut document's rest is
    skipped."""
    usable = starts[starts + block_size + 1 <= shard_len]
    follow = np.searchsorted(usable, usable + block_size).tolist()  # each start's successor, found at once
    chosen, i = [], 0
    while i < len(usable):  # the chain from the first start: one step per row
        chosen.append(i)
        i = follow[i]
    return usable[chosen]


def best_fit_rows(lengths: np.ndarray, row_len: int, buffer: int = BESTFIT_BUFFER) -> tuple[list, list, list]:
    """nanochat's BOS-aligned best-fit packing of documents (in order, `buffer` of them to choose from)
    into rows of exactly row_len tokens: each row takes the longest buffered document that fits the
    room left, again and again; when none fits, the shortest is cropped to fill the row (its rest is
    discarded). Returns CSR lists: (document index per piece, tokens taken per piece, row offsets);
    a last row that cannot be filled is dropped."""
    lens, n = lengths.tolist(), len(lengths)
    pool: list[tuple[int, int]] = []  # (length, document index), sorted
    docs, taken, rows = [], [], [0]
    nxt = 0
    while True:
        row_docs, row_taken, room = [], [], row_len
        while room:
            while len(pool) < buffer and nxt < n:
                bisect.insort(pool, (lens[nxt], nxt))
                nxt += 1
            if not pool:
                return docs, taken, rows
            i = bisect.bisect_right(pool, (room, n)) - 1  # the longest that fits, or -1
            length, d = pool.pop(max(i, 0))
            row_docs.append(d)
            row_taken.append(min(length, room))
            room -= row_taken[-1]
        docs += row_docs
        taken += row_taken
        rows.append(len(docs))


class _DocRows:
    """Training rows of block_size+1 tokens that each start at a document: 'crop' (one stretch of the shard
    per row) or 'bestfit' (whole documents packed, one cropped). Planned once, when the loader opens the
    data; the same interface as _Windows (total, gather, segments)."""

    def __init__(self, shards: list[np.memmap], block_size: int, mode: str, eot: int):
        self.shards, self.block_size, self.mode = shards, block_size, mode
        row_len = block_size + 1
        starts, lengths, row_ptr, row_shard = [], [], [np.zeros(1, dtype=np.int64)], []
        pieces = 0  # pieces planned so far
        for s, shard in enumerate(shards):
            doc_starts, doc_ends = document_spans(shard, eot)
            if mode == "crop":
                first = crop_row_starts(doc_starts, len(shard), block_size)
                starts.append(first)
                lengths.append(np.full(len(first), row_len, dtype=np.int64))
                count = len(first)
                pieces_per_row = np.ones(count, dtype=np.int64)
            else:
                docs, taken, ptr = best_fit_rows(doc_ends - doc_starts, row_len)
                starts.append(doc_starts[np.asarray(docs, dtype=np.int64)])
                lengths.append(np.asarray(taken, dtype=np.int64))
                count = len(ptr) - 1
                pieces_per_row = np.diff(np.asarray(ptr, dtype=np.int64))
            row_ptr.append(pieces + np.cumsum(pieces_per_row))
            pieces += int(pieces_per_row.sum())
            row_shard.append(np.full(count, s, dtype=np.int32))
        self.piece_start = np.concatenate(starts)    # where each piece starts in its shard
        self.piece_len = np.concatenate(lengths)     # tokens it takes
        self.row_ptr = np.concatenate(row_ptr)       # row i's pieces: row_ptr[i]:row_ptr[i+1]
        self.row_shard = np.concatenate(row_shard)   # the shard every piece of row i comes from
        self.total = len(self.row_shard)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.block_size + 1), dtype=np.int64)
        for row, idx in enumerate(indices):
            shard, at = self.shards[self.row_shard[idx]], 0
            for p in range(self.row_ptr[idx], self.row_ptr[idx + 1]):
                a, n = int(self.piece_start[p]), int(self.piece_len[p])
                out[row, at:at + n] = shard[a:a + n]
                at += n
        return out

    def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, start, end) of every stretch of a shard that a row copies."""
        shard = np.repeat(self.row_shard, np.diff(self.row_ptr))
        return shard, self.piece_start, self.piece_start + self.piece_len


def train_rows(shards: list[np.memmap], block_size: int, doc_align: str, eot: int) -> _Windows | _DocRows:
    """The training rows doc_align asks for: windows at fixed offsets ('off'), or rows opening at documents."""
    if doc_align not in DOC_ALIGNS:
        raise ValueError(f"doc_align={doc_align!r}; expected one of {DOC_ALIGNS}")
    return _Windows(shards, block_size) if doc_align == "off" else _DocRows(shards, block_size, doc_align, eot)


class TrainLoader:
    """Shuffled training batches: every row once per epoch, disjoint across DDP ranks.

    The rows (`windows`) are planned once from the data: with doc_align='off' non-overlapping windows of
    block_size+1 tokens at fixed offsets; with 'crop' or 'bestfit' rows that each start at a document
    (train_rows). The global stream of rows is a fixed function of (seed, epoch), and `position` counts
    the rows consumed by all ranks together. Each micro-step every rank takes the next
    world_size*batch_size rows and keeps its own slice, so a run with W ranks and a run with one
    rank and W times the accumulation see the same rows per optimizer step, and a resumed run
    (position restored) sees exactly the rows it would have seen.
    """

    def __init__(self, data_dir: str, batch_size: int, block_size: int, seed: int = 1337,
                 rank: int = 0, world_size: int = 1, device: str = "cpu", doc_align: str = "off",
                 eot_token: int = 50256):
        shards = [open_shard(p) for p in find_shards(data_dir, "train")]
        self.windows = train_rows(shards, block_size, doc_align, eot_token)
        if self.windows.total < batch_size * world_size:
            n_tok = sum(len(s) for s in self.windows.shards)
            what = "windows" if doc_align == "off" else f"rows opening at a document (eot_token={eot_token})"
            raise ShardError(
                f"the train split has {n_tok:,} tokens = {self.windows.total} {what} of block_size+1="
                f"{block_size + 1} tokens, fewer than one global micro-batch of batch_size*world_size="
                f"{batch_size * world_size}; prepare more data or lower batch_size/block_size" +
                ("" if doc_align == "off" else ", or check that eot_token is the shards' end-of-text token "
                                               "(meta.json's eot_id)"))
        self.doc_align = doc_align
        self.B, self.seed, self.rank, self.world_size, self.device = batch_size, seed, rank, world_size, device
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            dtype = np.int32 if self.windows.total < 2**31 else np.int64  # halves memory for big corpora
            self._perm = rng.permutation(self.windows.total).astype(dtype)
            self._perm_epoch = epoch
        return self._perm

    def _indices(self, start: int, n: int) -> np.ndarray:
        total = self.windows.total
        g = np.arange(start, start + n)
        out = np.empty(n, dtype=np.int64)
        for epoch in np.unique(g // total):  # a batch may straddle an epoch boundary
            sel = (g // total) == epoch
            out[sel] = self._permutation(int(epoch))[g[sel] % total]
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(x, y, state): x and y (batch_size, block_size) int64 on the loader's device, and the loader
        state once this batch is consumed: restoring it continues with the batch after this one."""
        start = self.position + self.rank * self.B
        self.position += self.world_size * self.B
        xy = self.windows.gather(self._indices(start, self.B))
        return to_device(xy[:, :-1], self.device), to_device(xy[:, 1:], self.device), self.state_dict()

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "windows": self.windows.total,
                "doc_align": self.doc_align}

    def load_state_dict(self, state: dict) -> None:
        now = {"windows": self.windows.total, "seed": self.seed, "doc_align": self.doc_align}
        saved = {"doc_align": "off", **state}  # checkpoints from before doc_align trained on windows
        changed = report.changes({k: saved[k] for k in now}, now)
        if changed:  # windows: the train split's rows, which data, block_size and doc_align decide
            raise ShardError(
                f"the train batches differ from the checkpoint's (checkpoint -> now: {'; '.join(changed)}); "
                f"resuming would not see the same batches. Restore the data and settings, or start a new run")
        self.position = int(state["position"])


class ValSet:
    """The fixed validation set: the first num_batches*batch_size windows of the val split, in order.

    Identical on every eval and every run; rank r takes batches r, r+W, ... so ranks are disjoint.
    """

    def __init__(self, data_dir: str, batch_size: int, block_size: int, num_batches: int, device: str = "cpu"):
        self.windows = _Windows([open_shard(p) for p in find_shards(data_dir, "val")], block_size)
        needed = num_batches * batch_size
        if self.windows.total < needed:
            n_tok = sum(len(s) for s in self.windows.shards)
            fits = self.windows.total // batch_size
            fix = (f"lower eval_iters (at most {fits})" if fits else
                   f"it does not hold one batch: lower batch_size or block_size (at most {max(1, n_tok - 1)} for "
                   f"batch_size=1)")
            raise ShardError(
                f"eval needs eval_iters*batch_size={needed} windows of {block_size + 1} tokens "
                f"({needed * block_size:,} tokens) but the val split has {n_tok:,} tokens "
                f"({self.windows.total} windows); {fix}, or prepare a larger val split (prepare.py --val_tokens)")
        self.B, self.num_batches, self.device = batch_size, num_batches, device
        self.paths = find_shards(data_dir, "val")
        self.text_bytes: int | None = None  # UTF-8 bytes of the text the evaluated targets encode (count_text_bytes)

    @property
    def num_tokens(self) -> int:
        """Target tokens one evaluation predicts (over all ranks)."""
        return self.num_batches * self.B * self.windows.block_size

    def targets(self) -> np.ndarray:
        """The tokens one evaluation predicts: (num_batches*batch_size, block_size), the same every eval."""
        return self.windows.gather(np.arange(self.num_batches * self.B))[:, 1:]

    def count_text_bytes(self, meta: dict) -> str:
        """Set text_bytes, the bytes of exactly the evaluated target tokens, for bits per byte; return a
        line for the log. Exact: the sum of each target token's byte length under the shards' tokenizer.
        meta.json names that tokenizer and records each val shard's text bytes, against which the token
        lengths are checked over the whole shard (a wrong tokenizer record would not add up). Shards
        without those records (llm.c's) leave text_bytes None: bits per byte n/a, never a guess."""
        from fineweb_gpt.tokenizer import TokenizerError, describe, token_byte_lengths
        recorded = {s["file"]: s.get("text_bytes") for s in meta.get("shards", []) if s.get("split") == "val"}
        names = [os.path.basename(p) for p in self.paths]
        if not meta:
            return "val bits per byte: n/a (no meta.json beside the shards, so their text's bytes are unknown)"
        if any(recorded.get(n) is None for n in names):
            return ("val bits per byte: n/a (meta.json records no text bytes for the val shards; "
                    "prepare.py records them since bits per byte was added: re-run it with --overwrite)")
        name = describe(meta)["name"]
        try:
            lengths = token_byte_lengths(name)
        except TokenizerError as e:
            return f"val bits per byte: n/a ({e})"
        for shard, n in zip(self.windows.shards, names):
            if int(shard.max(initial=0)) >= len(lengths) or shard_bytes(shard, lengths) != recorded[n]:
                return (f"val bits per byte: n/a ({n}'s tokens do not decode to the {recorded[n]:,} text bytes "
                        f"meta.json records under the {name} tokenizer)")
        self.text_bytes = int(lengths[self.targets()].sum())
        return (f"val: {self.num_tokens:,} tokens per eval encode {self.text_bytes:,} bytes of text "
                f"({self.text_bytes / self.num_tokens:.2f} bytes/token)")

    def bits_per_byte(self, loss: float) -> float | None:
        """Mean val loss (nats/token) as bits per UTF-8 byte of the same text: total nats / ln 2 / bytes.
        The end-of-text predictions' loss is charged to the document text (they count 0 bytes)."""
        if not self.text_bytes:
            return None
        return loss * self.num_tokens / self.text_bytes / math.log(2)

    def batches(self, rank: int = 0, world_size: int = 1):
        for b in range(rank, self.num_batches, world_size):
            xy = self.windows.gather(np.arange(b * self.B, (b + 1) * self.B))
            yield to_device(xy[:, :-1], self.device), to_device(xy[:, 1:], self.device)
