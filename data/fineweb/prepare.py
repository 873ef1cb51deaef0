"""Tokenize FineWeb (or your own corpus) into uint16 token shards that train.py reads.

    python data/fineweb/prepare.py                                   # download the default FineWeb shard
    python data/fineweb/prepare.py --input='~/fineweb/*.parquet' --out_dir=data/fineweb
    python data/fineweb/prepare.py --hf_repo=HuggingFaceFW/fineweb-edu --hf_files=sample/10BT/000_00000.parquet
    python data/fineweb/prepare.py --hf_dataset=HuggingFaceFW/fineweb --hf_config=sample-10BT --max_docs=100000

Documents stream in record batches (bounded memory), are tokenized with tiktoken on all cores, each
followed by the end-of-text token, and are written whole into shards of about --shard_size tokens:
first the validation split (the first --val_tokens tokens' worth of documents, or --val_docs
documents), then train. Shards appear under their final name only when complete; after each one a
small state file records where the next begins, so running the same command again resumes and
writes byte-identical shards. meta.json is written last and marks the output as finished.
"""
from __future__ import annotations

import collections
import errno
import glob
import json
import os
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from fineweb_gpt import report, runlock, tokenizer  # noqa: E402
from fineweb_gpt.atomic import AtomicFile, os_error_reason, write_json  # noqa: E402
from configurator import ConfigError, check_values, cli, flag, key  # noqa: E402
from fineweb_gpt.dataloader import PREPARE_STATE, header_for  # noqa: E402
from fineweb_gpt.errors import UserError, raised_as  # noqa: E402
from readers import (BAD, ZSTD_ERRORS, PrepareError, Source, data_suffix, download_hf_files,  # noqa: E402
                     expand_inputs, parquet_rows, prefetch, read_arrow, read_jsonl, read_parquet, read_txt,
                     stream_hf_dataset)

FORMAT_VERSION = 1


@dataclass
class PrepareConfig:
    input: str = key("", "local files, folders or globs (.parquet; JSON lines as .jsonl/.json, optionally .gz/.zst; "
                         ".txt; .arrow), comma-separated; folders and globs skip metadata and list what they skip; "
                         "empty = download --hf_files from --hf_repo")
    out_dir: str = key(os.path.dirname(os.path.abspath(__file__)), "where shards and meta.json go")
    prefix: str = key("fineweb", "shard name prefix: PREFIX_train_000001.bin, PREFIX_val_000000.bin")
    hf_repo: str = key("HuggingFaceFW/fineweb", "Hugging Face dataset repo to download --hf_files from")
    hf_files: str = key("sample/10BT/000_00000.parquet", "comma-separated files of --hf_repo to download")
    hf_dataset: str = key("", "stream this Hugging Face dataset with `datasets` instead (no full download)")
    hf_config: str = key("sample-10BT", "dataset config for --hf_dataset")
    hf_split: str = key("train", "dataset split for --hf_dataset")
    max_docs: int = key(0, "stop after this many documents (0 = all)", range="[0, inf)")
    text_column: str = key("text", "column (parquet) or field (jsonl) holding the text")
    tokenizer: str = key("gpt2", "tiktoken encoding name")
    shard_size: int = key(100_000_000, "tokens per shard (documents are never split, so shards may run over)",
                          range="[1, inf)")
    val_tokens: int = key(10_000_000, "tokens of whole documents, from the start, in the val split", range="[0, inf)")
    val_docs: int = key(0, "if > 0: number of documents in the val split (overrides val_tokens)", range="[0, inf)")
    num_threads: int = key(0, "tokenizer threads (0 = all cores)", range="[0, inf)")
    batch_docs: int = key(1024, "documents read and tokenized per batch", range="[1, inf)")
    on_error: str = key("fail", "bad document/file: 'fail' stops (finished shards are kept), 'skip' reports and goes on",
                        choices=("fail", "skip"))
    overwrite: bool = key(False, "delete this prefix's shards, meta.json and state in out_dir and start over")
    progress: bool = key(True, "show a progress bar")


# ----------------------------------------------------------------------------- shards

class ShardWriter:
    """Writes one shard at a time under a temporary name; renames it when complete."""

    def __init__(self, out_dir: str, prefix: str, dtype: np.dtype):
        self.out_dir, self.prefix, self.dtype = out_dir, prefix, dtype
        self.file = None

    def open(self, split: str, index: int) -> None:
        self.name = f"{self.prefix}_{split}_{index:06d}.bin"
        self.file = AtomicFile(os.path.join(self.out_dir, self.name))
        self.file.file.write(header_for(self.dtype, 0).tobytes())  # placeholder until the count is known
        self.tokens = self.docs = self.text_bytes = 0

    def write(self, tokens: np.ndarray, docs: int, text_bytes: int) -> None:
        self.file.file.write(np.ascontiguousarray(tokens, dtype=self.dtype).data)
        self.tokens += len(tokens)
        self.docs += docs
        self.text_bytes += text_bytes

    def close(self) -> dict:
        """Finish the shard: real header, then publish it under its final name. Returns its manifest entry."""
        self.file.file.seek(0)
        self.file.file.write(header_for(self.dtype, self.tokens).tobytes())
        self.file.commit()
        self.file = None
        # text_bytes: UTF-8 bytes of the documents' text (train.py's bits per byte is checked against it)
        return {"file": self.name, "tokens": self.tokens, "docs": self.docs, "text_bytes": self.text_bytes}

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()
            self.file = None


def out_dir_failed(e: OSError) -> PrepareError:
    """A failed write into out_dir (a read-only folder, a file in its place, ...), as a message."""
    return PrepareError(f"{e}\nFinished shards are kept; fix that and run the same command again to resume.")


def clean_out_dir(out_dir: str, prefix: str) -> None:
    for pattern in (f"{prefix}_train_*.bin*", f"{prefix}_val_*.bin*", "meta.json", PREPARE_STATE):
        for p in glob.glob(os.path.join(out_dir, pattern)):
            os.remove(p)


# ----------------------------------------------------------------------------- main job

class Prepare:
    """One run of the pipeline: sources -> tokens -> val shard(s) then train shards."""

    def __init__(self, cfg: PrepareConfig):
        no_val = cfg.val_tokens == 0 and cfg.val_docs == 0
        check_values(cfg, ["train.py evaluates on a val split: set --val_tokens or --val_docs above 0"] * no_val)
        self.cfg = cfg
        self.sources = self._resolve_sources()  # a wrong path is reported before anything is downloaded
        try:
            self.enc = tokenizer.load_encoding(cfg.tokenizer)
        except tokenizer.TokenizerError as e:
            raise PrepareError(str(e)) from None
        if self.enc.n_vocab > 2**32:
            raise PrepareError(f"{cfg.tokenizer} has {self.enc.n_vocab} tokens; shards store at most uint32 ids")
        # uint16 holds ids < 65536 (llm.c's format); larger vocabularies get llm.c's uint32 header
        self.dtype = np.dtype(np.uint16 if self.enc.n_vocab <= 2**16 else np.uint32)
        self.eot = np.array([self.enc.eot_token], dtype=np.uint32)
        self.threads = cfg.num_threads or os.cpu_count() or 1

    def _resolve_sources(self) -> list[Source]:
        cfg = self.cfg
        if cfg.hf_dataset:
            return [Source(f"hf://{cfg.hf_dataset}/{cfg.hf_config}/{cfg.hf_split}", 0, None)]
        paths = expand_inputs(cfg.input) if cfg.input else download_hf_files(cfg.hf_repo, cfg.hf_files)
        return [Source(p, os.path.getsize(p), parquet_rows(p) if data_suffix(p) == ".parquet" else None)
                for p in paths]

    def settings(self) -> dict:
        keys = ("tokenizer", "text_column", "shard_size", "val_tokens", "val_docs", "max_docs", "prefix")
        return {k: getattr(self.cfg, k) for k in keys}

    # -- resume state

    def _fresh_state(self) -> dict:
        return {"settings": self.settings(), "sources": [], "cursor": [0, 0], "split": "val", "index": 0,
                "shards": [], "docs": 0, "tokens": 0, "empty": 0, "errors": [], "source_docs": {}}

    def _load_state(self) -> dict:
        cfg = self.cfg
        os.makedirs(cfg.out_dir, exist_ok=True)
        if cfg.overwrite:
            clean_out_dir(cfg.out_dir, cfg.prefix)
        path = os.path.join(cfg.out_dir, PREPARE_STATE)
        existing = glob.glob(os.path.join(cfg.out_dir, f"{cfg.prefix}_*_*.bin"))
        if not os.path.exists(path):
            if existing:
                raise PrepareError(f"{cfg.out_dir} already holds {len(existing)} {cfg.prefix} shards but no "
                                   f"resume state; pass --overwrite to replace them, or choose another --out_dir")
            return self._fresh_state()
        with open(path) as f:
            state = json.load(f)
        if state["settings"] != self.settings():
            stored = state["settings"]
            keep = " ".join(flag(k, stored[k]) for k in stored if stored[k] != self.settings().get(k))
            raise PrepareError(f"{cfg.out_dir} holds shards made with other settings ("
                               f"{'; '.join(report.changes(stored, self.settings()))}); to continue them, run with "
                               f"the settings they were made with ({keep}), or pass --overwrite to start over")
        done = state["sources"]
        now = [[s.name, s.size] for s in self.sources[:len(done)]]
        if now != done:
            raise PrepareError(f"the inputs already tokenized into {cfg.out_dir} changed ({'; '.join(input_changes(done, now))}); "
                               f"pass --overwrite to start over")
        return state

    def _save_state(self, state: dict, cursor: tuple[int, int]) -> None:
        state["cursor"] = list(cursor)
        state["sources"] = [[s.name, s.size] for s in self.sources[:cursor[0] + 1]]
        write_json(os.path.join(self.cfg.out_dir, PREPARE_STATE), state)

    # -- reading

    def _report(self, message: str) -> None:
        if self.cfg.on_error == "fail":
            raise PrepareError(message + "\n(pass --on_error=skip to skip bad documents and files and go on)")
        if message in self.state["errors"]:  # seen before the resume cursor in an earlier run
            return
        self.state["errors"].append(message)
        if len(self.state["errors"]) <= 20:
            print(f"skipped: {message}", file=sys.stderr)

    def _read(self, source: Source, start: int) -> Iterator[list]:
        cfg = self.cfg
        if source.name.startswith("hf://"):
            return stream_hf_dataset(cfg.hf_dataset, cfg.hf_config, cfg.hf_split, cfg.text_column, start,
                                     cfg.batch_docs, self._report)
        suffix = data_suffix(source.name)
        if suffix == ".parquet":
            return read_parquet(source.name, cfg.text_column, start, cfg.batch_docs, self._report)
        if suffix == ".arrow":
            return read_arrow(source.name, cfg.text_column, start, cfg.batch_docs, self._report)
        if suffix == ".txt":
            return read_txt(source.name, start, self._report)
        return read_jsonl(source.name, cfg.text_column, start, cfg.batch_docs, self._report)

    def documents(self, state: dict) -> Iterator[tuple[int, int, list]]:
        """(source index, row of the first text, texts) from the saved cursor on."""
        first_src, first_row = state["cursor"]
        for si in range(first_src, len(self.sources)):
            src = self.sources[si]
            row = first_row if si == first_src else 0
            try:
                for texts in prefetch(self._read(src, row)):
                    yield si, row, texts
                    row += len(texts)
            except PrepareError:
                raise
            except OSError as e:
                if e.errno is None:  # gzip's BadGzipFile and other format errors carry no errno
                    self._report(self._corrupt(src, row, e))
                else:  # the system refused (permission, I/O error): no guess about the file's bytes
                    self._report(f"{src.name}: cannot be read after {row} documents ({os_error_reason(e)})")
            except (EOFError, pa.ArrowInvalid, UnicodeDecodeError, json.JSONDecodeError, zlib.error,
                    *ZSTD_ERRORS) as e:  # the file's bytes are bad; any other error is a bug, with its traceback
                self._report(self._corrupt(src, row, e))

    @staticmethod
    def _corrupt(src: Source, row: int, e: BaseException) -> str:
        return (f"{src.name}: unreadable after {row} documents ({type(e).__name__}: {e}); the file is corrupt or "
                f"truncated, re-download it")

    # -- the job

    def run(self) -> dict:
        with runlock.hold(self.cfg.out_dir, f"--out_dir={self.cfg.out_dir}", PrepareError):  # one run per folder
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        with raised_as(out_dir_failed, OSError):
            self.state = state = self._load_state()
        meta_path = os.path.join(cfg.out_dir, "meta.json")
        if os.path.exists(meta_path) and os.path.exists(os.path.join(cfg.out_dir, PREPARE_STATE)) \
                and state.get("finished"):
            print(f"{cfg.out_dir} is already complete ({state['tokens']:,} tokens); --overwrite to redo it")
            with open(meta_path) as f:
                return json.load(f)
        writer = ShardWriter(cfg.out_dir, cfg.prefix, self.dtype)
        t0, docs0, tokens0 = time.time(), state["docs"], state["tokens"]
        known = [s.rows for s in self.sources]
        total = sum(known) if None not in known else None
        if cfg.max_docs:
            total = min(total, cfg.max_docs) if total else cfg.max_docs
        bar = _progress(cfg.progress, total, state["docs"] + state["empty"] + len(state["errors"]))
        try:
            writer.open(state["split"], state["index"])
            for si, row, texts, flat, lengths in self.tokenized(state):
                self._write_batch(state, writer, si, row, texts, flat, lengths)
                bar.update(len(texts))
                rate = (state["tokens"] + writer.tokens - tokens0) / max(time.time() - t0, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
                if cfg.max_docs and state["docs"] + writer.docs >= cfg.max_docs:
                    break
            if writer.tokens:
                state["shards"].append({"split": state["split"], **writer.close()})
            else:
                writer.abort()
        except OSError as e:
            writer.abort()
            kept = f"the unfinished shard was removed and the {len(state['shards'])} finished shards are kept"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PrepareError(f"disk full in {cfg.out_dir} ({e.strerror}): {kept}; free space and run the same "
                                   f"command again to resume") from None
            raise PrepareError(f"could not write into --out_dir={cfg.out_dir} ({os_error_reason(e)}): {kept}; once "
                               f"that is fixed, run the same command again to resume") from None
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        state["docs"] = sum(s["docs"] for s in state["shards"])
        state["tokens"] = sum(s["tokens"] for s in state["shards"])
        if not state["docs"]:
            raise PrepareError(
                f"no documents to tokenize in {len(self.sources)} input(s): {state['empty']:,} texts were null or "
                f"empty and {len(state['errors'])} documents/files were skipped as bad. Check --text_column "
                f"(now {cfg.text_column!r}) and the inputs")
        if not any(s["split"] == "train" for s in state["shards"]):
            raise PrepareError(f"all {state['docs']:,} documents ({state['tokens']:,} tokens) went to the val split; "
                               f"pass --overwrite with a smaller --val_tokens (or --val_docs)")
        meta = self._meta(state)
        try:
            write_json(meta_path, meta)
            state["finished"] = True
            self._save_state(state, (len(self.sources) - 1, 0))
        except OSError as e:
            raise PrepareError(f"could not write {meta_path} ({os_error_reason(e)}); the shards are complete: once "
                               f"that is fixed, run the same command again to finish") from None
        self._summary(state, time.time() - t0, state["docs"] - docs0, state["tokens"] - tokens0)
        return meta

    def _write_batch(self, state: dict, writer: ShardWriter, si: int, row: int, texts: list,
                     flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append a batch's documents in row order, finishing a shard where the next document starts one.

        Runs of documents bound for the same shard are written with one call; the state saved at a
        shard boundary counts exactly the rows before the document that opens the next shard.
        """
        cfg = self.cfg
        lengths = lengths.tolist()
        start = end = pending = pending_bytes = k = 0  # flat[start:end] holds `pending` documents not yet written
        per_source = state["source_docs"]
        for j, text in enumerate(texts):
            if not text:
                if text is not BAD:  # a BAD document is already counted among the errors
                    state["empty"] += 1
                continue
            if cfg.max_docs and state["docs"] + writer.docs + pending >= cfg.max_docs:
                break
            n = lengths[k]
            k += 1
            tokens, docs = writer.tokens + end - start, writer.docs + pending
            val_full = state["split"] == "val" and (docs >= cfg.val_docs if cfg.val_docs > 0 else tokens >= cfg.val_tokens)
            if tokens and (val_full or tokens + n > cfg.shard_size):
                writer.write(flat[start:end], pending, pending_bytes)
                start, pending, pending_bytes = end, 0, 0
                self._next_shard(state, writer, val_full, (si, row + j))
            end += n
            pending += 1
            pending_bytes += len(text.encode("utf-8", "surrogatepass"))
            per_source[str(si)] = per_source.get(str(si), 0) + 1
        writer.write(flat[start:end], pending, pending_bytes)

    def _next_shard(self, state: dict, writer: ShardWriter, val_full: bool, cursor: tuple[int, int]) -> None:
        """Finish the current shard, save the resume state pointing at `cursor`, open the next shard."""
        entry = writer.close()
        state["shards"].append({"split": state["split"], **entry})
        state["docs"] += entry["docs"]
        state["tokens"] += entry["tokens"]
        if val_full:
            state["split"], state["index"] = "train", max(state["index"] + 1, 1)
        else:
            state["index"] += 1
        self._save_state(state, cursor)
        writer.open(state["split"], state["index"])

    def _encode_chunk(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, BaseException]]]:
        """(tokens with an EOT after each document, per-document lengths, (index, error) of each document
        that could not be tokenized) for non-empty texts; a failed document adds no tokens and no length.

        Runs in a worker thread: tiktoken's encoder releases the GIL and encode_to_numpy skips
        building Python ints. disallowed_special=() encodes "<|endoftext|>" in a text as plain text,
        exactly like encode_ordinary.
        """
        parts, failed = [], []
        for i, text in enumerate(texts):
            try:
                parts += [self.enc.encode_to_numpy(text, disallowed_special=()), self.eot]
            except (UnicodeEncodeError, ValueError) as e:  # a lone surrogate; tiktoken's regex giving up
                failed.append((i, e))
            except BaseException as e:  # a panic in tiktoken's Rust code (pyo3's PanicException)
                if type(e).__name__ != "PanicException":
                    raise
                failed.append((i, e))
        lengths = np.array([len(p) + 1 for p in parts[::2]], dtype=np.int64)
        flat = np.concatenate(parts).astype(self.dtype) if parts else np.empty(0, dtype=self.dtype)
        return flat, lengths, failed

    def _where(self, si: int, row: int) -> str:
        """A document's place as the user finds it: file:line for JSON lines, the row for tables."""
        name = self.sources[si].name
        suffix = data_suffix(name) or ""
        if name.startswith("hf://"):
            return f"{self.cfg.hf_dataset} row {row}"
        if suffix == ".txt":
            return name
        return f"{name}:{row + 1}" if ".json" in suffix else f"{name} row {row}"

    def tokenized(self, state: dict) -> Iterator[tuple[int, int, list, np.ndarray, np.ndarray]]:
        """documents() with tokens, on all cores; the next batch is tokenized while the caller writes this one.
        A document that cannot be tokenized is reported (file and line) and stands as BAD."""
        pool = ThreadPoolExecutor(max_workers=self.threads)
        pending: collections.deque = collections.deque()

        def result(item):
            si, row, texts, futures, step = item
            chunks = [f.result() for f in futures]
            where = [j for j, t in enumerate(texts) if t]  # each tokenized document's index in texts
            for c, chunk in enumerate(chunks):
                for i, e in chunk[2]:
                    j = where[c * step + i]
                    first_line = (str(e).strip().splitlines() or [""])[0][:200]
                    self._report(f"{self._where(si, row + j)}: cannot be tokenized ({type(e).__name__}: {first_line})")
                    texts[j] = BAD
            return si, row, texts, np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

        try:
            for si, row, texts in self.documents(state):
                docs = [t for t in texts if t]
                step = max(1, -(-len(docs) // self.threads))
                futures = [pool.submit(self._encode_chunk, docs[i:i + step]) for i in range(0, len(docs), step)]
                futures = futures or [pool.submit(self._encode_chunk, [])]
                pending.append((si, row, texts, futures, step))
                if len(pending) > 1:
                    yield result(pending.popleft())
            while pending:
                yield result(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _meta(self, state: dict) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "tokenizer": self.cfg.tokenizer,
            "vocab_size": self.enc.n_vocab,
            "eot_id": self.enc.eot_token,
            "dtype": self.dtype.name,
            "header": {"magic": int(header_for(self.dtype, 0)[0]), "version": int(header_for(self.dtype, 0)[1]),
                       "ints": 256},
            "settings": self.settings(),
            "sources": [{"name": s.name, "bytes": s.size, "docs": state["source_docs"].get(str(i), 0)}
                        for i, s in enumerate(self.sources)],
            "shards": state["shards"],
            "docs": state["docs"],
            "tokens": state["tokens"],
            "skipped_empty": state["empty"],
            "skipped_errors": state["errors"],
        }

    def _summary(self, state: dict, seconds: float, docs: int, tokens: int) -> None:
        splits = {sp: sum(s["tokens"] for s in state["shards"] if s["split"] == sp) for sp in ("train", "val")}
        print(f"done: {state['docs']:,} documents, {state['tokens']:,} tokens "
              f"(train {splits['train']:,}, val {splits['val']:,}) in {len(state['shards'])} shards in {self.cfg.out_dir}")
        print(f"skipped: {state['empty']:,} empty/null documents, {len(state['errors'])} bad documents/files")
        print(f"this run: {docs:,} documents, {tokens:,} tokens in {seconds:.1f}s = {tokens / max(seconds, 1e-9):,.0f} tokens/s "
              f"on {self.threads} threads")


def _progress(enabled: bool, total: int | None, initial: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="doc", disable=not enabled, dynamic_ncols=True)


def input_changes(done: list[list], now: list[list]) -> list[str]:
    """'path (bytes) -> path (bytes)' for each input, in order, that differs from the one tokenized before."""
    show = lambda s: f"{s[0]} ({s[1]:,} bytes)" if s else "(none)"  # noqa: E731
    return [f"input {i + 1}: {show(a)} -> {show(b)}" for i, (a, b) in
            enumerate(zip(done, now + [None] * (len(done) - len(now)))) if a != b]


def main(argv: list[str] | None = None) -> dict:
    cfg = cli(PrepareConfig, "prepare.py", argv)
    try:
        return Prepare(cfg).run()
    except ConfigError as e:
        sys.exit(f"prepare.py: config error: {e}")
    except UserError as e:
        sys.exit(f"prepare.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("prepare.py: interrupted; finished shards are kept. Run the same command again to resume.")


if __name__ == "__main__":
    main()
