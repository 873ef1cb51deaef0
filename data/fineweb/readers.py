"""Where documents come from: local parquet / jsonl / txt files, Hugging Face dataset files, or a
`datasets` stream. Each reader yields batches of texts (None for a missing or bad one) from a given
row on, so prepare.py can resume mid-file; problems are reported with file and line.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from typing import IO, Callable, Iterator

from fineweb_gpt.errors import UserError  # prepare.py puts the repository root on sys.path

# JSON lines come as .jsonl or .json (C4 and Dolma name theirs .json.gz), plain, gzip or zstd (the Pile,
# SlimPajama and RedPajama ship .jsonl.zst); .arrow is what `datasets`' save_to_disk writes
JSON_LINES = tuple(ext + comp for ext in (".jsonl", ".json") for comp in ("", ".gz", ".zst"))
SUFFIXES = (".parquet", *JSON_LINES, ".txt", ".arrow")
# files that describe a dataset rather than hold it (Hugging Face, git, prepare.py's own output), by name
METADATA_NAMES = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "meta.json",
                  ".prepare_state.json", "config.json", ".gitattributes", ".gitignore"}
METADATA_STEMS = {"readme", "license", "licence", "notice", "citation", "changelog", "checksums", "md5sums",
                  "sha1sums", "sha256sums", "sha512sums"}
NOT_READ = {".csv": "CSV is not read: convert it to parquet or JSON lines",
            ".tsv": "TSV is not read: convert it to parquet or JSON lines",
            ".bz2": "bzip2 is not read: recompress it as .gz or .zst", ".xz": "xz is not read: recompress it as .gz or .zst",
            ".lz4": "lz4 is not read: recompress it as .gz or .zst", ".incomplete": "an unfinished download"}
try:  # a corrupt .zst file raises zstandard's own error
    from zstandard import ZstdError
    ZSTD_ERRORS: tuple = (ZstdError,)
except ImportError:
    ZSTD_ERRORS = ()


class PrepareError(UserError):
    """A problem the user can fix; printed without a traceback."""


class _Bad:
    """Stands for a document that was reported and skipped: counted once, as an error, never as empty."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "BAD"


BAD = _Bad()
Report = Callable[[str], None]  # records a problem: raises under --on_error=fail, else notes it and goes on


@dataclass
class Source:
    name: str        # path, or hf://dataset/config/split for a stream
    size: int        # bytes on disk (0 for a stream)
    rows: int | None  # documents, when known up front (parquet metadata)


def data_suffix(path: str) -> str | None:
    """The data type a file's name ends in (any case), or None."""
    lower = path.lower()
    return next((suffix for suffix in SUFFIXES if lower.endswith(suffix)), None)


def skip_reason(path: str) -> str | None:
    """Why a file that a folder or pattern holds is not read (None: it is data). Metadata is told apart by
    name, and a plain .json file by its first line: JSON lines start with a whole object on one line,
    dataset metadata is one document over many lines."""
    name = os.path.basename(path)
    lower = name.lower()
    if lower in METADATA_NAMES or lower.split(".")[0] in METADATA_STEMS:
        return "dataset metadata, not data"
    suffix = data_suffix(path)
    if suffix is None:
        ending = next((e for e in NOT_READ if lower.endswith(e)), None)
        return NOT_READ[ending] if ending else "not a data file (reads .parquet, .jsonl, .json, .txt, .arrow, " \
                                                "JSON lines also as .gz or .zst)"
    if suffix != ".json":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
            if not head:
                return "empty"
            if head[:1] != b"{":
                return "one JSON document, not JSON lines (convert an array: jq -c '.[]')"
            f.seek(0)
            json.loads(f.readline(1 << 26))
            return None
    except ValueError:
        return "one JSON document over many lines, not JSON lines"
    except OSError:  # read as data: reading reports it with the reason, under --on_error
        return None


def _files_below(folder: str) -> tuple[list[str], list[str]]:
    """(files, folders not searched) below folder, recursively, in a stable order; hidden folders (.git,
    .cache) are not entered, and a folder that cannot be listed is named with the reason."""
    files, hidden, seen = [], [], set()

    def unreadable(e: OSError) -> None:
        hidden.append(f"{e.filename} (cannot be listed: {e.strerror})")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink back up the tree
            dirnames[:] = []
            continue
        seen.add(real)
        hidden += [os.path.join(dirpath, d) for d in dirnames if d.startswith(".")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [os.path.join(dirpath, f) for f in filenames]
    return sorted(files), sorted(hidden)


def _skipped_summary(where: str, taken: int, skipped: list[tuple[str, str]], hidden: list[str]) -> str:
    """One line per reason, naming up to five files each."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    lines = [f"{where}: {taken} data file(s); skipped {len(skipped)} file(s)"
             + (f" and did not search {len(hidden)} hidden or unreadable folder(s) ({', '.join(hidden[:5])})"
                if hidden else "")]
    for reason, paths in by_reason.items():
        more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        lines.append(f"  {', '.join(paths[:5])}{more}: {reason}")
    return "\n".join(lines)


def expand_inputs(spec: str, note: Callable[[str], None] | None = None) -> list[str]:
    """Files named by comma-separated paths, folders and globs, in a stable order. A file named is read
    (an unknown type is an error); of what a folder or a pattern finds, what is not data is skipped and
    listed through `note` (stderr by default)."""
    note = note or (lambda message: print(message, file=sys.stderr))
    paths: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        part = os.path.expanduser(part)
        if os.path.isdir(part) or any(c in part for c in "*?["):
            paths += _found(part, note)
        elif os.path.exists(part):
            if data_suffix(part) is None:
                raise PrepareError(f"{part}: unsupported file type; use {', '.join(SUFFIXES)}")
            paths.append(part)
        else:
            raise PrepareError(f"input file {part} does not exist")
    unique = list(dict.fromkeys(os.path.realpath(p) for p in paths))
    if len(unique) < len(paths):
        note(f"--input names {len(paths) - len(unique)} file(s) twice: each is read once")
        first = {}
        for p in paths:
            first.setdefault(os.path.realpath(p), p)
        paths = list(first.values())
    return paths


def _found(part: str, note: Callable[[str], None]) -> list[str]:
    """The data files of a folder or a glob (folders it matches are searched too); the rest is noted."""
    if os.path.isdir(part):
        candidates, hidden = _files_below(part)
        where = f"folder {part}"
    else:
        matches = sorted(glob.glob(part, recursive=True))
        if not matches:
            raise PrepareError(f"--input pattern {part!r} matches no files")
        candidates, hidden = [], []
        for m in matches:
            below = _files_below(m) if os.path.isdir(m) else ([m], [])
            candidates += below[0]
            hidden += below[1]
        where = f"--input pattern {part!r}"
    reasons = {p: skip_reason(p) for p in candidates}
    skipped = [(p, r) for p, r in reasons.items() if r]
    found = [p for p, r in reasons.items() if not r]
    if not found:
        raise PrepareError(f"{where} holds no data files (.parquet, .jsonl, .json, .txt, .arrow; JSON lines also as .gz "
                           f"or .zst)\n" + _skipped_summary(where, 0, skipped, hidden))
    if skipped or hidden:
        note(_skipped_summary(where, len(found), skipped, hidden))
    return found


def download_hf_files(repo: str, files: str) -> list[str]:
    """Local paths of repo files, downloaded by huggingface_hub (cached; interrupted downloads resume)."""
    from huggingface_hub import hf_hub_download
    paths = []
    for name in [f.strip() for f in files.split(",") if f.strip()]:
        try:
            paths.append(hf_hub_download(repo_id=repo, filename=name, repo_type="dataset"))
        except Exception as e:  # offline, missing file, auth: all end the same way for the user
            raise PrepareError(
                f"could not download {name} from the Hugging Face dataset {repo}: {type(e).__name__}: {e}\n"
                f"Check your internet connection and the file name, or download the file yourself and "
                f"pass --input=PATH") from None
    return paths


def parquet_rows(path: str) -> int | None:
    """Row count from the footer, for the progress bar; None if unreadable (reported when read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid):  # a bad or unreadable file: reading it reports why
        return None


def _is_text(arrow_type) -> bool:
    """Strings, in any of arrow's layouts (large, view, dictionary-encoded)."""
    import pyarrow as pa
    if pa.types.is_dictionary(arrow_type):
        return _is_text(arrow_type.value_type)
    view = getattr(pa.types, "is_string_view", None)  # pyarrow >= 16
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or bool(view and view(arrow_type))


def read_parquet(path: str, column: str, start: int, batch_docs: int, report: Report) -> Iterator[list]:
    """Batches of texts (None for nulls) from row `start` on, one record batch at a time."""
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise PrepareError(f"{path} has no column {column!r}; its columns are {names}; pass --text_column=NAME")
    kind = pf.schema_arrow.field(column).type
    if not _is_text(kind):
        text_columns = [f.name for f in pf.schema_arrow if _is_text(f.type)]
        report(f"{path}: column {column!r} holds {kind}, not text; the text columns are {text_columns}: pass "
               f"--text_column=NAME")
        return
    first_rg, before = 0, 0  # skip whole row groups on resume without decoding them
    while first_rg < pf.num_row_groups and before + pf.metadata.row_group(first_rg).num_rows <= start:
        before += pf.metadata.row_group(first_rg).num_rows
        first_rg += 1
    row = before
    # one row group at a time: pyarrow's reader over many row groups reads far ahead (GBs on big files)
    for rg in range(first_rg, pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_docs, row_groups=[rg], columns=[column], use_threads=False):
            texts = batch.column(0).to_pylist()
            skip = max(0, start - row)
            row += len(texts)
            if skip < len(texts):
                yield texts[skip:]


def read_arrow(path: str, column: str, start: int, batch_docs: int, report: Report) -> Iterator[list]:
    """Batches of texts from an Arrow file as `datasets` writes them (save_to_disk: the IPC stream format;
    the IPC file format is read too), from row `start` on."""
    import pyarrow as pa
    with pa.memory_map(path) as source:
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            file_reader = pa.ipc.open_file(source)
            reader = file_reader
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        schema = reader.schema
        if column not in schema.names:
            raise PrepareError(f"{path} has no column {column!r}; its columns are {schema.names}; pass "
                               f"--text_column=NAME")
        if not _is_text(schema.field(column).type):
            text_columns = [f.name for f in schema if _is_text(f.type)]
            report(f"{path}: column {column!r} holds {schema.field(column).type}, not text; the text columns are "
                   f"{text_columns}: pass --text_column=NAME")
            return
        row = 0
        for batch in batches:
            texts = batch.column(schema.get_field_index(column)).to_pylist()
            skip, row = max(0, start - row), row + len(texts)
            for i in range(skip, len(texts), batch_docs):
                yield texts[i:i + batch_docs]


def open_compressed(path: str) -> IO[bytes]:
    """A binary file, decompressed as it is read (gzip or zstd by the name's ending)."""
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    if path.lower().endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise PrepareError(f"{path}: reading .zst files needs the zstandard package (pip install zstandard, "
                               f"listed in requirements.txt)") from None
        return io.BufferedReader(_ZstdFrames(path, zstandard.ZstdDecompressor()))
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """A zstd file's frames, decompressed one after another. Unlike zstandard's stream reader it raises
    EOFError when the file ends inside a frame (a truncated download), as gzip does."""

    def __init__(self, path: str, decompressor):
        self.file, self.decompressor = open(path, "rb"), decompressor
        self.frame, self.pending = decompressor.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            data = self.file.read(1 << 20)
            if not data:
                if not self.frame.eof:
                    raise EOFError("the file ends in the middle of a zstd frame (truncated)")
                return 0
            while data:
                if self.frame.eof:  # the next frame starts here
                    self.frame = self.decompressor.decompressobj()
                self.pending += self.frame.decompress(data)
                data = self.frame.unused_data if self.frame.eof else b""
        n = min(len(buffer), len(self.pending))
        buffer[:n], self.pending = self.pending[:n], self.pending[n:]
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def read_jsonl(path: str, column: str, start: int, batch_docs: int, report: Report) -> Iterator[list]:
    """Batches of texts, one JSON object per line, from line `start + 1` on. A line that is not an object
    with a string `column` is reported (file:line) and stands as BAD."""
    with open_compressed(path) as f:
        if f.peek(256).lstrip()[:1] == b"[":
            report(f"{path} holds one JSON array, not JSON lines (one object per line); convert it, e.g. "
                   f"jq -c '.[]' {path} > {os.path.basename(path).split('.')[0]}.jsonl")
            return
        yield from batched((_json_text(raw, path, lineno, column, report)
                            for lineno, raw in enumerate(f, 1) if lineno > start), batch_docs)


def _json_text(raw: bytes, path: str, lineno: int, column: str, report: Report):
    """The text of one JSON line, or BAD (reported)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        report(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}")
        return BAD
    except json.JSONDecodeError as e:
        report(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})")
        return BAD
    if not isinstance(obj, dict) or column not in obj:
        fields = list(obj) if isinstance(obj, dict) else type(obj).__name__
        report(f"{path}:{lineno}: no {column!r} field (has {fields}); pass --text_column=NAME")
        return BAD
    if obj[column] is not None and not isinstance(obj[column], str):
        report(f"{path}:{lineno}: {column!r} is {type(obj[column]).__name__} {str(obj[column])[:40]}, not text")
        return BAD
    return obj[column]


def batched(texts: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_txt(path: str, start: int, report: Report) -> Iterator[list]:
    if start > 0:
        return
    with open(path, "rb") as f:
        raw = f.read()
    try:
        yield [raw.decode("utf-8")]
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        report(f"{path}:{line}: invalid UTF-8 at byte {e.start}")
        yield [BAD]


def stream_hf_dataset(dataset: str, config: str, split: str, column: str, start: int,
                      batch_docs: int, report: Report) -> Iterator[list]:
    """Stream documents with `datasets` (no full download)."""
    import datasets

    def text_of(i: int, row: dict):
        text = row.get(column)
        if text is not None and not isinstance(text, str):
            report(f"{dataset} row {i}: {column!r} is {type(text).__name__} {str(text)[:40]}, not text; pass "
                   f"--text_column=NAME")
            return BAD
        return text

    def rows() -> Iterator[dict]:  # only loading and streaming are converted: a bug elsewhere keeps its traceback
        try:
            ds = datasets.load_dataset(dataset, name=config or None, split=split, streaming=True)
            yield from ds
        except Exception as e:  # the hub's and the network's many error types: all say the same thing here
            raise PrepareError(
                f"could not stream {dataset} ({config}, {split}): {type(e).__name__}: {e}\n"
                f"Check your internet connection and the dataset name, or download parquet files and "
                f"pass --input=PATH") from e
    yield from batched((text_of(i, row) for i, row in enumerate(rows()) if i >= start), batch_docs)


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run a reader in a thread so file decoding overlaps tokenization; re-raises its errors."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # the consumer may stop early (max_docs, an error): then give up
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in it:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
