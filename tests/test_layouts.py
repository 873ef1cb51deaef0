"""The folder layouts people bring, each as a tiny copy of the real one, prepared from its top folder:
data files are read wherever they sit, metadata is skipped, and what was skipped is listed with why.
Also: a document that cannot be tokenized is that document's error, named by file and line."""
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare
from test_bad_input import fails_cleanly

import zstandard  # noqa: E402  (requirements.txt: a missing one is an error, not a skip)

HF_CARD = "---\nlicense: odc-by\n---\n# A dataset card\n"
GITATTRIBUTES = "*.parquet filter=lfs diff=lfs merge=lfs -text\n"
DATASET_INFO = json.dumps({"features": {"text": {"dtype": "string", "_type": "Value"}}, "splits": {}}, indent=2)


def docs(tag: str, n: int = 2) -> list[str]:
    return [f"{tag} document {i}: some words of text." for i in range(n)]


def json_lines(texts, **extra) -> bytes:
    return "".join(json.dumps({"text": t, **extra}) + "\n" for t in texts).encode()


def put(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".parquet"):
        pq.write_table(pa.table({"text": data, "id": [str(i) for i in range(len(data))]}), path)
    elif isinstance(data, str):
        open(path, "w").write(data)
    else:
        open(path, "wb").write(data)


def fineweb(top) -> tuple[int, list[str]]:
    """FineWeb's repo: data/CC-MAIN-*/000_00000.parquet, sample/10BT/ (FineWeb-Edu's too), a card, LFS attributes."""
    put(f"{top}/data/CC-MAIN-2024-10/000_00000.parquet", docs("cc10"))
    put(f"{top}/data/CC-MAIN-2024-18/000_00000.parquet", docs("cc18"))
    put(f"{top}/sample/10BT/000_00000.parquet", docs("sample"))
    put(f"{top}/README.md", HF_CARD)
    put(f"{top}/.gitattributes", GITATTRIBUTES)
    return 6, ["README.md", ".gitattributes"]


def c4(top) -> tuple[int, list[str]]:
    """allenai/c4: en/c4-train.00000-of-01024.json.gz and c4-validation..., gzip JSON lines only."""
    put(f"{top}/en/c4-train.00000-of-01024.json.gz", gzip.compress(json_lines(docs("c4"), url="u", timestamp="t")))
    put(f"{top}/en/c4-validation.00000-of-00008.json.gz", gzip.compress(json_lines(docs("c4v", 1))))
    put(f"{top}/README.md", HF_CARD)
    return 3, ["README.md"]


def dolma(top) -> tuple[int, list[str]]:
    """Dolma: one folder per source of *.json.gz files with id, text, source, added."""
    put(f"{top}/books/books-0000.json.gz", gzip.compress(json_lines(docs("book"), source="books", added="2023")))
    put(f"{top}/cc_en_head/cc_en_head-0000.json.gz", gzip.compress(json_lines(docs("cc", 3), source="cc")))
    return 5, []


def pile_slimpajama_redpajama(top) -> tuple[int, list[str]]:
    """the Pile: train/00.jsonl.zst; SlimPajama: train/chunk1/example_train_0.jsonl.zst; RedPajama: plain
    jsonl per source. Each with its metadata: a card, checksums."""
    z = zstandard.ZstdCompressor()
    put(f"{top}/pile/train/00.jsonl.zst", z.compress(json_lines(docs("pile"), meta={"pile_set_name": "Books3"})))
    put(f"{top}/pile/val.jsonl.zst", z.compress(json_lines(docs("pilev", 1))))
    put(f"{top}/slimpajama/train/chunk1/example_train_0.jsonl.zst", z.compress(json_lines(docs("slim1"))))
    put(f"{top}/slimpajama/train/chunk2/example_train_0.jsonl.zst", z.compress(json_lines(docs("slim2"))))
    put(f"{top}/redpajama/arxiv/arxiv_0.jsonl", json_lines(docs("arxiv")))
    put(f"{top}/redpajama/README.md", HF_CARD)
    put(f"{top}/pile/SHA256SUMS.txt", "0123 train/00.jsonl.zst\n")
    return 9, ["README.md", "SHA256SUMS.txt"]


def hf_hub_folder(top) -> tuple[int, list[str]]:
    """A Hugging Face dataset repo as downloaded: README.md, dataset_info.json, data/train-*.parquet."""
    put(f"{top}/data/train-00000-of-00002.parquet", docs("hf0"))
    put(f"{top}/data/train-00001-of-00002.parquet", docs("hf1"))
    put(f"{top}/dataset_info.json", DATASET_INFO)
    put(f"{top}/README.md", HF_CARD)
    put(f"{top}/.gitattributes", GITATTRIBUTES)
    # huggingface-cli download --local-dir keeps its bookkeeping, and unfinished downloads, in .cache/
    put(f"{top}/.cache/huggingface/download/data/train-00002-of-00002.parquet.incomplete", b"PAR1 half")
    return 4, ["dataset_info.json", "README.md", ".gitattributes", "hidden or unreadable folder(s) (" + f"{top}/.cache"]


def hf_save_to_disk(top) -> tuple[int, list[str]]:
    """What datasets' save_to_disk writes: data-*.arrow (Arrow IPC streams), dataset_info.json, state.json."""
    os.makedirs(top)
    table = pa.table({"text": docs("arrow", 3), "id": ["a", "b", "c"]})
    with pa.OSFile(f"{top}/data-00000-of-00001.arrow", "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)
    put(f"{top}/dataset_info.json", DATASET_INFO)
    put(f"{top}/state.json", json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}, indent=2))
    return 3, ["dataset_info.json", "state.json"]


def txt_tree(top) -> tuple[int, list[str]]:
    """A folder of .txt files in subfolders (books by author), with a LICENSE and a README."""
    put(f"{top}/austen/emma.txt", "Emma Woodhouse, handsome, clever, and rich.")
    put(f"{top}/austen/persuasion.txt", "Sir Walter Elliot, of Kellynch Hall.")
    put(f"{top}/melville/moby_dick.txt", "Call me Ishmael.")
    put(f"{top}/LICENSE.txt", "public domain")
    put(f"{top}/README.md", "books")
    return 3, ["LICENSE.txt", "README.md"]


@pytest.mark.parametrize("layout", [fineweb, c4, dolma, pile_slimpajama_redpajama, hf_hub_folder, hf_save_to_disk,
                                    txt_tree])
def test_each_layout_prepares_from_its_top_folder(tiktoken_cache, tmp_path, capsys, layout):
    top = str(tmp_path / layout.__name__)
    n_docs, skipped = layout(top)
    meta = prepare.main([f"--input={top}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1", "--progress=False"])
    assert meta["docs"] == n_docs and not meta["skipped_errors"]
    assert all(s["docs"] > 0 for s in meta["sources"])  # every data file found was read
    err = capsys.readouterr().err
    for name in skipped:  # each skipped file is named, with why
        line = next((line for line in err.splitlines() if name in line), None)
        assert line is not None and ": " in line, err
    if not skipped:
        assert "skipped" not in err


def test_a_folder_that_mixes_json_gz_and_jsonl_zst_reads_both(tiktoken_cache, tmp_path):
    put(f"{tmp_path}/in/c4-train.00000-of-01024.json.gz", gzip.compress(json_lines(docs("c4"))))
    put(f"{tmp_path}/in/pile.jsonl.zst", zstandard.ZstdCompressor().compress(json_lines(docs("pile"))))
    meta = prepare.main([f"--input={tmp_path / 'in'}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1",
                         "--progress=False"])
    assert meta["docs"] == 4 and len(meta["sources"]) == 2


def test_plain_json_lines_are_data_and_a_json_document_is_metadata(tiktoken_cache, tmp_path, capsys):
    put(f"{tmp_path}/in/part-0.json", json_lines(docs("part", 3)))  # JSON lines under a .json name
    put(f"{tmp_path}/in/features.json", DATASET_INFO)  # one pretty-printed object: metadata
    put(f"{tmp_path}/in/array.json", json.dumps([{"text": "x"}]))
    meta = prepare.main([f"--input={tmp_path / 'in'}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1",
                         "--progress=False"])
    assert meta["docs"] == 3 and [os.path.basename(s["name"]) for s in meta["sources"]] == ["part-0.json"]
    err = capsys.readouterr().err
    assert "features.json: one JSON document over many lines, not JSON lines" in err
    assert "array.json: one JSON document, not JSON lines" in err and "jq -c" in err


def test_a_folder_of_metadata_only_is_refused_naming_what_was_skipped(tiktoken_cache, tmp_path):
    hf_hub_folder(str(tmp_path / "in"))
    for f in (tmp_path / "in" / "data").iterdir():
        f.unlink()
    fails_cleanly(prepare.main, [f"--input={tmp_path / 'in'}", f"--out_dir={tmp_path / 'out'}", "--progress=False"],
                  f"folder {tmp_path / 'in'} holds no data files", "dataset_info.json", "dataset metadata",
                  "README.md", untouched=[tmp_path / "in"])


def test_a_glob_skips_what_is_not_data_and_a_file_named_twice_is_read_once(tiktoken_cache, tmp_path, capsys):
    c4(str(tmp_path / "c4"))
    one = tmp_path / "c4" / "en" / "c4-train.00000-of-01024.json.gz"
    meta = prepare.main([f"--input={tmp_path / 'c4'}/*,{one}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1",
                         "--progress=False"])
    assert meta["docs"] == 3 and len(meta["sources"]) == 2
    err = capsys.readouterr().err
    assert "README.md: dataset metadata" in err and "names 1 file(s) twice" in err


# ----------------------------------------------------------------------------- text that cannot be tokenized

def test_a_document_that_cannot_be_tokenized_is_named_by_line_and_honours_on_error(tiktoken_cache, tmp_path):
    path = tmp_path / "scraped.jsonl"
    lines = [json.dumps({"text": "a good document"}),
             '{"text": "half of a surrogate pair \\ud800 alone"}',  # valid JSON, not encodable as UTF-8
             json.dumps({"text": " " * 1_000_000 + "x"}),  # tiktoken's regex gives up on it
             json.dumps({"text": "another good one"})]
    path.write_text("\n".join(lines) + "\n")
    fails_cleanly(prepare.main, [f"--input={path}", f"--out_dir={tmp_path / 'o1'}", "--progress=False"],
                  f"{path}:2: cannot be tokenized (UnicodeEncodeError", "--on_error=skip")
    meta = prepare.main([f"--input={path}", f"--out_dir={tmp_path / 'o2'}", "--val_docs=1", "--on_error=skip",
                         "--progress=False"])
    assert meta["docs"] == 2 and meta["skipped_empty"] == 0
    errors = meta["skipped_errors"]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:2", f"{path}:3"]
    assert "UnicodeEncodeError" in errors[0] and "ValueError" in errors[1]
    assert meta["sources"][0]["docs"] == 2


def test_an_untokenizable_row_of_a_parquet_file_is_named_by_row(tiktoken_cache, tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "REFUSED three", "four"]}), path)
    load = prepare.tokenizer.load_encoding

    class Refusing:  # GPT-2's encoding, refusing one text (as tiktoken's regex refused one above)
        def __init__(self, name):
            self.enc = load(name)
            self.n_vocab, self.eot_token = self.enc.n_vocab, self.enc.eot_token

        def encode_to_numpy(self, text, **kw):
            if text.startswith("REFUSED"):
                raise ValueError("Regex error while tokenizing")
            return self.enc.encode_to_numpy(text, **kw)

    monkeypatch.setattr(prepare.tokenizer, "load_encoding", Refusing)
    meta = prepare.main([f"--input={path}", f"--out_dir={tmp_path / 'o'}", "--val_docs=1", "--on_error=skip",
                         "--progress=False", "--num_threads=2", "--batch_docs=3"])
    assert meta["docs"] == 3 and meta["skipped_errors"] == [f"{path} row 2: cannot be tokenized (ValueError: Regex "
                                                            f"error while tokenizing)"]


def test_a_subfolder_that_cannot_be_listed_is_named_not_passed_over(tmp_path, monkeypatch, capsys):
    import readers
    put(f"{tmp_path}/in/a/x.jsonl", json_lines(docs("a", 1)))
    os.makedirs(tmp_path / "in" / "locked")
    scandir = os.scandir

    def refusing(path="."):  # what listing a folder without read permission raises (root could read it)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert readers.expand_inputs(str(tmp_path / "in")) == [str(tmp_path / "in" / "a" / "x.jsonl")]
    assert f"{tmp_path / 'in' / 'locked'} (cannot be listed: Permission denied)" in capsys.readouterr().err
