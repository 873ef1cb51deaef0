"""prepare.py on real FineWeb documents: exact round trip, resume, determinism, and every bad input."""
import errno
import glob
import gzip
import json
import os
import shlex

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare
from configurator import parse_config
from fineweb_gpt.dataloader import open_shard, read_header


def run(*args, **kw):
    return prepare.Prepare(parse_config(prepare.PrepareConfig, [*args, "--progress=False"])).run()


def texts_of(paths):
    return [t for p in paths for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]


def docs_in(out_dir, split):
    """Documents decoded back from the shards of a split, split at the EOT token."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    docs = []
    for path in sorted(glob.glob(os.path.join(out_dir, f"fineweb_{split}_*.bin"))):
        tokens = np.asarray(open_shard(path))
        assert tokens[-1] == enc.eot_token  # shards hold whole documents
        ends = np.flatnonzero(tokens == enc.eot_token)
        docs += [enc.decode(tokens[a + 1 if i else 0:b].tolist()) for i, (a, b) in enumerate(zip([0, *ends[:-1]], ends))]
    return docs


def shard_bytes(out_dir):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out_dir, "*.bin")))}


def test_round_trip_gives_back_every_document_in_order(tiktoken_cache, parquet_files, tmp_path):
    files = parquet_files[:3]
    meta = run(f"--input={','.join(files)}", f"--out_dir={tmp_path}", "--val_docs=20", "--shard_size=100000")
    original = texts_of(files)
    assert docs_in(tmp_path, "val") + docs_in(tmp_path, "train") == original
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    expected = sum(len(enc.encode_ordinary(t)) for t in original) + len(original)  # one EOT per document
    assert meta["tokens"] == expected
    assert sum(s["tokens"] for s in meta["shards"]) == expected
    assert [s["file"] for s in meta["shards"]][:2] == ["fineweb_val_000000.bin", "fineweb_train_000001.bin"]
    assert meta["shards"][0]["docs"] == 20 and meta["docs"] == len(original)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"], meta["dtype"]) == ("gpt2", 50257, 50256, "uint16")
    assert [s["docs"] for s in meta["sources"]] == [100, 100, 100]
    # each shard's text bytes (train.py's bits per byte is checked against them): the val shard's 20 documents
    assert meta["shards"][0]["text_bytes"] == sum(len(t.encode("utf-8")) for t in original[:20])
    assert sum(s["text_bytes"] for s in meta["shards"]) == sum(len(t.encode("utf-8")) for t in original)
    for s in meta["shards"]:
        assert read_header(os.path.join(tmp_path, s["file"]))[1] == s["tokens"]


def test_val_split_by_tokens_is_deterministic(tiktoken_cache, parquet_files, tmp_path):
    run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path / 'a'}", "--val_tokens=30000")
    run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path / 'b'}", "--val_tokens=30000", "--num_threads=1",
        "--batch_docs=7")
    a, b = shard_bytes(tmp_path / "a"), shard_bytes(tmp_path / "b")
    assert a == b  # same bytes whatever the threads and batch size
    n_val = len(open_shard(str(tmp_path / "a" / "fineweb_val_000000.bin")))
    assert 30000 <= n_val < 30000 + 20000  # whole documents until the target is reached


def test_interrupted_run_resumes_to_byte_identical_shards(tiktoken_cache, parquet_files, tmp_path, monkeypatch):
    args = [f"--input={','.join(parquet_files[:3])}", "--val_tokens=20000", "--shard_size=60000"]
    run(*args, f"--out_dir={tmp_path / 'whole'}")
    closes = {"n": 0}
    real_close = prepare.ShardWriter.close

    def close_then_crash(self):
        entry = real_close(self)
        closes["n"] += 1
        if closes["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C right after the third shard is finished
        return entry

    monkeypatch.setattr(prepare.ShardWriter, "close", close_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(*args, f"--out_dir={tmp_path / 'cut'}")
    monkeypatch.setattr(prepare.ShardWriter, "close", real_close)
    cut = tmp_path / "cut"
    assert not (cut / "meta.json").exists()
    assert not glob.glob(str(cut / "*.tmp"))  # nothing half-written is left behind
    with pytest.raises(Exception, match="interrupted before it finished"):
        from fineweb_gpt.dataloader import find_shards
        find_shards(str(cut), "train")
    meta = run(*args, f"--out_dir={cut}")
    assert shard_bytes(cut) == shard_bytes(tmp_path / "whole")
    assert meta["shards"] == json.load(open(tmp_path / "whole" / "meta.json"))["shards"]
    again = run(*args, f"--out_dir={cut}")  # a finished run is not redone
    assert again["tokens"] == meta["tokens"]


def test_resume_refuses_changed_settings_and_overwrite_starts_over(tiktoken_cache, parquet_files, tmp_path):
    run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path}", "--val_docs=5")
    with pytest.raises(prepare.PrepareError, match=r"other settings \(shard_size: 100000000 -> 60000; "
                                                   r"val_docs: 5 -> 6\)") as e:
        run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path}", "--val_docs=6", "--shard_size=60000")
    assert "tokenizer" not in str(e.value)  # only what differs is named
    fix = shlex.split(str(e.value).split("were made with (", 1)[1].split(")", 1)[0])
    assert fix == ["--shard_size=100000000", "--val_docs=5"]
    assert run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path}", *fix)["shards"][0]["docs"] == 5  # pasted
    meta = run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path}", "--val_docs=6", "--overwrite")  # a bare flag
    assert meta["shards"][0]["docs"] == 6


def test_disk_full_removes_the_partial_shard_and_keeps_finished_ones(tiktoken_cache, parquet_files, tmp_path, monkeypatch):
    real_write = prepare.ShardWriter.write
    written = {"tokens": 0}

    def write(self, tokens, docs, text_bytes):
        written["tokens"] += len(tokens)
        if written["tokens"] > 150_000:  # the disk fills up partway through the third shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, tokens, docs, text_bytes)

    monkeypatch.setattr(prepare.ShardWriter, "write", write)
    with pytest.raises(prepare.PrepareError, match="disk full .* finished shards are kept; free space"):
        run(f"--input={','.join(parquet_files[:2])}", f"--out_dir={tmp_path}", "--val_docs=10", "--shard_size=50000")
    assert not glob.glob(str(tmp_path / "*.tmp"))
    finished = glob.glob(str(tmp_path / "*.bin"))
    assert finished and all(read_header(p) for p in finished)


def test_null_and_empty_texts_are_skipped_and_counted(tiktoken_cache, tmp_path):
    path = tmp_path / "docs.parquet"
    texts = ["first doc", None, "", "second <|endoftext|> doc", "third"]  # the EOT string is just text in a doc
    pq.write_table(pa.table({"text": texts}), path)
    meta = run(f"--input={path}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1")
    assert meta["skipped_empty"] == 2 and meta["docs"] == 3
    assert docs_in(tmp_path / "out", "val") + docs_in(tmp_path / "out", "train") == [texts[0], texts[3], texts[4]]


def test_missing_text_column_lists_the_columns(tiktoken_cache, tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["a", "b"], "url": ["u", "v"]}), path)
    with pytest.raises(prepare.PrepareError, match=r"no column 'text'; its columns are \['content', 'url'\]; pass --text_column"):
        run(f"--input={path}", f"--out_dir={tmp_path / 'out'}")
    meta = run(f"--input={path}", f"--out_dir={tmp_path / 'out2'}", "--text_column=content", "--val_docs=1",
               "--on_error=skip")
    assert meta["docs"] == 2


def test_missing_file_and_empty_glob(tiktoken_cache, tmp_path):
    with pytest.raises(prepare.PrepareError, match="does not exist"):
        run(f"--input={tmp_path / 'nope.parquet'}", f"--out_dir={tmp_path}")
    with pytest.raises(prepare.PrepareError, match="matches no files"):
        run(f"--input={tmp_path / '*.parquet'}", f"--out_dir={tmp_path}")


def test_corrupt_and_truncated_parquet(tiktoken_cache, parquet_files, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all" * 10)
    truncated = tmp_path / "truncated.parquet"
    data = open(parquet_files[1], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    good = parquet_files[0]
    for broken in (bad, truncated):
        with pytest.raises(prepare.PrepareError, match=f"{broken.name}: unreadable .* re-download"):
            run(f"--input={good},{broken}", f"--out_dir={tmp_path / ('f' + broken.stem)}", "--val_docs=5")
    meta = run(f"--input={good},{bad},{truncated}", f"--out_dir={tmp_path / 'skip'}", "--val_docs=5", "--on_error=skip")
    assert meta["docs"] == 100 and len(meta["skipped_errors"]) == 2


def test_jsonl_gz_and_txt_sources_with_bad_lines(tiktoken_cache, tmp_path):
    lines = [json.dumps({"text": "alpha"}).encode(), b"{not json", json.dumps({"body": "x"}).encode(),
             b'{"text": "bad \xff utf8"}', json.dumps({"text": "omega"}).encode()]
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    (tmp_path / "d.txt").write_text("a whole file is one document\nwith two lines")
    with pytest.raises(prepare.PrepareError, match=r"c\.jsonl\.gz:2: bad JSON"):
        run(f"--input={tmp_path / 'c.jsonl.gz'}", f"--out_dir={tmp_path / 'o1'}")
    meta = run(f"--input={tmp_path / 'c.jsonl.gz'},{tmp_path / 'd.txt'}", f"--out_dir={tmp_path / 'o2'}",
               "--val_docs=1", "--on_error=skip")
    errors = "\n".join(meta["skipped_errors"])
    assert ":2: bad JSON" in errors and ":3: no 'text' field (has ['body'])" in errors and ":4: invalid UTF-8" in errors
    assert docs_in(tmp_path / "o2", "val") + docs_in(tmp_path / "o2", "train") == \
        ["alpha", "omega", "a whole file is one document\nwith two lines"]


def test_everything_in_val_is_an_error(tiktoken_cache, parquet_files, tmp_path):
    with pytest.raises(prepare.PrepareError, match="went to the val split; .* smaller --val_tokens"):
        run(f"--input={parquet_files[0]}", f"--out_dir={tmp_path}", "--val_tokens=100000000")


def test_hf_file_download_is_used_and_offline_failure_is_clear(tiktoken_cache, parquet_files, tmp_path, monkeypatch):
    import huggingface_hub
    asked = []

    def fake_download(repo_id, filename, repo_type):
        asked.append((repo_id, filename, repo_type))
        return parquet_files[0]  # the hub's cache path, here a local file

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    meta = run("--hf_repo=HuggingFaceFW/fineweb-edu", "--hf_files=sample/10BT/000_00000.parquet",
               f"--out_dir={tmp_path / 'a'}", "--val_docs=5")
    assert asked == [("HuggingFaceFW/fineweb-edu", "sample/10BT/000_00000.parquet", "dataset")]
    assert meta["docs"] == 100

    def offline(**kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(prepare.PrepareError, match="(?s)could not download .* pass --input=PATH"):
        run(f"--out_dir={tmp_path / 'b'}")


def test_hf_dataset_streaming_with_max_docs(tiktoken_cache, parquet_files, tmp_path, monkeypatch):
    import datasets
    rows = [{"text": t, "id": i} for i, t in enumerate(texts_of(parquet_files[:1]))]
    seen = {}

    def fake_load_dataset(path, name=None, split=None, streaming=False):
        seen.update(path=path, name=name, split=split, streaming=streaming)
        return iter(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    meta = run("--hf_dataset=HuggingFaceFW/fineweb", "--hf_config=sample-10BT", "--max_docs=30",
               f"--out_dir={tmp_path}", "--val_docs=10")
    assert seen == {"path": "HuggingFaceFW/fineweb", "name": "sample-10BT", "split": "train", "streaming": True}
    assert meta["docs"] == 30
    assert docs_in(tmp_path, "val") + docs_in(tmp_path, "train") == [r["text"] for r in rows[:30]]


@pytest.mark.slow
def test_cli_error_has_no_traceback(tiktoken_cache, tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, prepare.__file__, f"--input={tmp_path}/missing.parquet"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_vocabularies_over_65536_are_written_as_uint32(tiktoken_cache, tmp_path, monkeypatch):
    import tiktoken
    gpt2 = tiktoken.get_encoding("gpt2")
    big = tiktoken.Encoding(name="big", pat_str=gpt2._pat_str, mergeable_ranks=gpt2._mergeable_ranks,
                            special_tokens={"<|endoftext|>": 100_000})  # ids up to 100000 do not fit uint16
    real = tiktoken.get_encoding
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: big if name == "big" else real(name))
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"]}), path)
    meta = run(f"--input={path}", f"--out_dir={tmp_path / 'o'}", "--tokenizer=big", "--val_docs=1")
    assert meta["dtype"] == "uint32" and meta["header"]["magic"] == 20240801 and meta["eot_id"] == 100_000
    tokens = open_shard(str(tmp_path / "o" / "fineweb_val_000000.bin"))
    assert tokens.dtype == np.uint32 and tokens.tolist() == gpt2.encode_ordinary("one") + [100_000]


def test_an_unwritable_out_dir_is_a_message(tiktoken_cache, parquet_files, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="prepare.py: error: --out_dir=.*a_file is a file; name a folder"):
        prepare.main([f"--input={parquet_files[0]}", f"--out_dir={blocker}", "--progress=False"])
    with pytest.raises(SystemExit, match=r"prepare.py: error: cannot write into --out_dir=.*a_file/sub \(creating the "
                                         r"folder failed: Not a directory \(ENOTDIR\)\)"):
        prepare.main([f"--input={parquet_files[0]}", f"--out_dir={blocker}/sub", "--progress=False"])
    assert blocker.read_text() == "not a folder"


def test_changed_inputs_are_named_one_by_one():
    done = [["a.parquet", 100], ["b.parquet", 200], ["c.parquet", 300]]
    assert prepare.input_changes(done, [["a.parquet", 100], ["b.parquet", 250]]) == [
        "input 2: b.parquet (200 bytes) -> b.parquet (250 bytes)", "input 3: c.parquet (300 bytes) -> (none)"]
