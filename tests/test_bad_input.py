"""Bad input at every boundary: each class of mistake ends in one message that names the file or key,
never a traceback, and every file that existed before is left byte for byte as it was.

Each case runs a script's main() in-process (a traceback would be an exception other than SystemExit)."""
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import export
import prepare
import sample
import train
from fineweb_gpt.checkpoint import load_checkpoint
from conftest import ROOT, TINY, losses, metrics, run_train
from fineweb_gpt.dataloader import header_for
from model import GPT, GPTConfig


def snapshot(*folders) -> dict:
    """sha256 of every file below the folders."""
    out = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def fails_cleanly(main, argv, *expected, untouched=()) -> str:
    """Run main(argv): it must exit non-zero with a message holding every `expected` text, and leave the files
    under `untouched` as they were."""
    before = snapshot(*untouched)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = str(exit_.value.code)
    assert exit_.value.code not in (0, None) and "Traceback" not in message
    for text in expected:
        assert text in message, message
    after = snapshot(*untouched)
    assert {p: d for p, d in after.items() if p in before} == before  # nothing that existed was changed
    return message


# ----------------------------------------------------------------------------- 1. data of the wrong type

def test_a_text_column_of_numbers_is_named_and_honours_on_error(tiktoken_cache, tmp_path):
    numbers, good = tmp_path / "numbers.parquet", tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3], "body": ["a", "b", "c"]}), numbers)
    pq.write_table(pa.table({"text": ["first doc", "second doc", "third doc"]}), good)
    fails_cleanly(prepare.main, [f"--input={numbers}", f"--out_dir={tmp_path / 'o1'}", "--progress=False"],
                  "numbers.parquet", "column 'text' holds int64, not text", "['body']", "--text_column")
    meta = prepare.main([f"--input={good},{numbers}", f"--out_dir={tmp_path / 'o2'}", "--val_docs=1",
                         "--on_error=skip", "--progress=False"])
    assert meta["docs"] == 3 and len(meta["skipped_errors"]) == 1 and meta["skipped_empty"] == 0


def test_jsonl_values_of_the_wrong_type_are_reported_by_line_and_counted_once(tiktoken_cache, tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": "alpha"}, {"text": 42}, {"text": ["a", "list"]}, {"text": None}, {"text": "omega"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fails_cleanly(prepare.main, [f"--input={path}", f"--out_dir={tmp_path / 'o1'}", "--progress=False"],
                  "mixed.jsonl:2: 'text' is int 42, not text")
    meta = prepare.main([f"--input={path}", f"--out_dir={tmp_path / 'o2'}", "--val_docs=1", "--on_error=skip",
                         "--progress=False"])
    assert meta["docs"] == 2 and meta["skipped_empty"] == 1  # the null; the two bad values are errors only
    assert [e.split(": ", 1)[0] for e in meta["skipped_errors"]] == [f"{path}:2", f"{path}:3"]


def test_inputs_with_no_text_say_what_happened(tiktoken_cache, tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([None, "", None], type=pa.string())}), path)
    fails_cleanly(prepare.main, [f"--input={path}", f"--out_dir={tmp_path / 'o'}", "--progress=False"],
                  "no documents to tokenize", "3 texts were null or empty", "--text_column")


# ----------------------------------------------------------------------------- 2. config files

@pytest.mark.parametrize("source, expected", [
    ("max_iters: 2\n", "c.py:1: 'max_iters: 2' is an annotation and sets nothing (YAML style?); write max_iters = 2"),
    ('"""a docstring is fine"""\nbatch_size = 4\nlearning_rate\n', "c.py:3: 'learning_rate' sets no config key"),
    ("batch_size = 4\nmax_iters == 2\n", "c.py:2: 'max_iters == 2' sets no config key"),
])
def test_config_lines_that_set_nothing_are_errors(tmp_path, source, expected):
    config = tmp_path / "c.py"
    config.write_text(source)
    fails_cleanly(train.main, [str(config)], expected, untouched=[tmp_path])


def test_a_config_with_annotated_assignments_still_applies(tmp_path):
    config = tmp_path / "c.py"
    config.write_text("max_iters: int = 7\n")
    from configurator import parse_config
    assert parse_config(train.TrainConfig, [str(config)]).max_iters == 7


# ----------------------------------------------------------------------------- 3. writing can fail anywhere

@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_a_message_and_the_old_one_survives(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=2")
    before = snapshot(tmp_path)
    # the process may write files of at most 4 MB: the next checkpoint (about 19 MB) fails mid-write,
    # as on a full disk (torch.save reports it as a RuntimeError)
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20)); import train; train.main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", script, *TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}",
                        "--max_iters=4", "--eval_interval=2", "--init_from=resume"],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "could not write the checkpoint" in r.stderr and "ckpt.pt as it was before this save is intact" in r.stderr
    assert "File too large (EFBIG)" in r.stderr  # the real error, and no guessed cause:
    assert "read-only" not in r.stderr and "disk is full" not in r.stderr and "disk full" not in r.stderr
    after = snapshot(tmp_path)
    assert {p: after[p] for p in before if p.endswith(".pt")} == {p: d for p, d in before.items() if p.endswith(".pt")}
    assert not [p for p in after if p.endswith(".tmp")]
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["loop"]["step"] == 2


@pytest.fixture(scope="module")
def run_dir(synthetic_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_train(synthetic_shards, out, "--max_iters=2", "--eval_interval=2")
    return out


@pytest.mark.slow  # a training run and transformers' import: in the full suite, out of the quick subset
def test_export_refuses_a_file_a_training_run_and_a_non_empty_folder(run_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    common = [f"--out_dir={run_dir}", "--tokenizer_files=False"]
    fails_cleanly(export.main, [*common, f"--hf_dir={a_file}"], "a_file is a file", untouched=[tmp_path])
    fails_cleanly(export.main, [*common, f"--hf_dir={a_file}/sub"], "cannot write into", "a_file",
                  untouched=[tmp_path])
    fails_cleanly(export.main, [*common, f"--hf_dir={run_dir}"], "holds a training run (ckpt.pt", untouched=[run_dir])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    fails_cleanly(export.main, [*common, f"--hf_dir={tmp_path / 'notes'}"], "is not empty", "--overwrite=True",
                  untouched=[tmp_path])
    export.main([*common, f"--hf_dir={tmp_path / 'notes'}", "--overwrite=True"])
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"  # overwrite replaces only what it writes
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "notes"))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export-")]  # the staging folder is gone


# ----------------------------------------------------------------------------- 4. data that disagrees with the model

def test_token_ids_beyond_the_vocabulary_are_caught_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("x_val_000000.bin", 4000), ("x_train_000001.bin", 20000)):
        tokens = rng.integers(0, 50000, size)
        tokens[size // 2] = 100_276  # a cl100k-sized vocabulary, without a meta.json to say so
        with open(data / name, "wb") as f:
            f.write(header_for(np.dtype(np.uint32), size).tobytes() + tokens.astype(np.uint32).tobytes())
    fails_cleanly(train.main, [*TINY, f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}"],
                  "x_val_000000.bin", "token id 100276", "vocab_size=50304", "--vocab_size=100288",
                  untouched=[data])
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_a_val_split_smaller_than_one_batch_suggests_what_works(synthetic_shards, tmp_path):
    message = fails_cleanly(train.main, [*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}",
                                         "--block_size=30000", "--n_layer=1"], "lower batch_size or block_size",
                            untouched=[synthetic_shards])
    assert "at most 0" not in message


# ----------------------------------------------------------------------------- 5. foreign files

def nanogpt_checkpoint(path, vocab_size=50304):
    """What nanoGPT's train.py saves: its model (compiled: _orig_mod. keys, older torch: causal-mask buffers),
    model_args, optimizer, iter_num, best_val_loss, config."""
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=True, vocab_size=vocab_size, dropout=0.0)
    model = GPT(GPTConfig(**args))
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    for i in range(2):
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    torch.save({"model": state, "optimizer": {}, "model_args": args, "iter_num": 5000, "best_val_loss": 3.3,
                "config": {"dataset": "openwebtext"}}, path)
    return model


def test_a_nanogpt_checkpoint_samples_but_does_not_resume(synthetic_shards, tiktoken_cache, tmp_path):
    ours = nanogpt_checkpoint(tmp_path / "ckpt.pt")
    fails_cleanly(train.main, [*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--init_from=resume"],
                  "is a nanoGPT checkpoint (iter_num 5000)", "sample.py", "another --out_dir", untouched=[tmp_path])
    from configurator import parse_config
    texts = sample.sample(parse_config(sample.SampleConfig, [f"--out_dir={tmp_path}", "--device=cpu", "--num_samples=1",
                                                             "--max_new_tokens=5", "--temperature=0", "--start=Hi",
                                                             "--stop_at_eot=False"]))
    from fineweb_gpt.generation import generate
    expected = torch.cat(list(generate(ours.eval(), torch.tensor([[17250]]), 5, temperature=0)), 1)  # "Hi" = 17250
    from fineweb_gpt.tokenizer import load_encoding
    assert texts == [load_encoding("gpt2").decode([17250, *expected[0].tolist()])]


def test_a_character_level_checkpoint_is_not_decoded_as_gpt2(tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt", vocab_size=65)
    fails_cleanly(sample.main, [f"--out_dir={tmp_path}", "--device=cpu"], "records no tokenizer", "65 embeddings",
                  untouched=[tmp_path])


def test_bare_weights_are_recognised(tmp_path):
    torch.save(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).state_dict(), tmp_path / "ckpt.pt")
    fails_cleanly(sample.main, [f"--out_dir={tmp_path}", "--device=cpu"], "holds bare model weights", "model_args",
                  untouched=[tmp_path])


# ----------------------------------------------------------------------------- 6. options out of range

@pytest.mark.parametrize("main, argv, expected", [
    (prepare.main, ["--num_threads=-1"], "'num_threads' must be >= 0, got -1"),
    (prepare.main, ["--max_docs=-5", "--batch_docs=0"], "'max_docs' must be >= 0, got -5\n  'batch_docs' must be >= 1"),
    (train.main, ["--seed=-1"], "'seed' must be >= 0, got -1"),
    (train.main, ["--dropout=1.0"], "'dropout' must be in [0, 1), got 1.0"),
    (train.main, ["--learning_rate=0"], "'learning_rate' must be > 0, got 0.0"),
    (sample.main, ["--top_p=1.5"], "'top_p' must be in (0, 1], got 1.5"),
])
def test_numeric_options_outside_their_range_are_refused(tmp_path, main, argv, expected):
    fails_cleanly(main, [*argv, f"--out_dir={tmp_path}"], expected, untouched=[tmp_path])


def test_help_shows_each_range(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    assert "--dropout=0.0  (float)" in out and "[in [0, 1)]" in out and "--batch_size=12  (int or str)" in out


# ----------------------------------------------------------------------------- 7. text encodings at the edges

def test_a_prompt_file_that_is_not_utf8_is_named_with_a_fix(run_dir, tiktoken_cache, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("Café crème".encode("latin-1"))
    fails_cleanly(sample.main, [f"--out_dir={run_dir}", "--device=cpu", f"--start=FILE:{prompt}"],
                  "prompt.txt is not UTF-8 text", "iconv", untouched=[tmp_path])
    prompt.write_bytes("\ufeffCafé".encode("utf-8"))  # a byte-order mark is not part of the prompt
    texts = sample.sample(sample.SampleConfig(out_dir=str(run_dir), device="cpu", start=f"FILE:{prompt}",
                                              num_samples=1, max_new_tokens=2))
    assert texts[0].startswith("Café")


# ----------------------------------------------------------------------------- 8. formats people bring

def test_json_gz_and_jsonl_zst_are_read_as_json_lines_and_an_array_is_explained(tiktoken_cache, tmp_path):
    zstandard = pytest.importorskip("zstandard", reason="zstandard is in requirements.txt")
    docs = [f"document number {i}, with some text" for i in range(6)]
    lines = ("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n").encode()
    with gzip.open(tmp_path / "c4-train.00000-of-01024.json.gz", "wb") as f:  # C4's naming
        f.write(lines[:len(lines) // 2 + 3].rsplit(b"\n", 1)[0] + b"\n")
    second = lines[len(lines[:len(lines) // 2 + 3].rsplit(b"\n", 1)[0]) + 1:]
    frames = zstandard.ZstdCompressor().compress(second[:20]) + zstandard.ZstdCompressor().compress(second[20:])
    (tmp_path / "pile.jsonl.zst").write_bytes(frames)  # two zstd frames, as some writers produce
    meta = prepare.main([f"--input={tmp_path / 'c4-train.00000-of-01024.json.gz'},{tmp_path / 'pile.jsonl.zst'}",
                         f"--out_dir={tmp_path / 'out'}", "--val_docs=1", "--progress=False"])
    assert meta["docs"] == 6 and [s["docs"] for s in meta["sources"]] == [3, 3]
    (tmp_path / "array.json").write_text(json.dumps([{"text": d} for d in docs]))
    fails_cleanly(prepare.main, [f"--input={tmp_path / 'array.json'}", f"--out_dir={tmp_path / 'o2'}",
                                 "--progress=False"], "array.json holds one JSON array, not JSON lines", "jq -c",
                  untouched=[tmp_path / "out"])


# ----------------------------------------------------------------------------- kill -9 while a checkpoint is written

SLOW_SAVE = '''
import os, time, torch
_save = torch.save
class _Stalls:
    """A file that stalls for a minute once 1 MB of the checkpoint is written: time to kill -9 mid-write."""
    def __init__(self, f): self.f, self.n, self.stalled = f, 0, False
    def write(self, b):
        self.n += len(b)
        if self.n > 1 << 20 and not self.stalled and os.environ.get("STALL_AT_SAVE") == str(_Stalls.saves):
            self.stalled = True
            open(os.environ["STALL_MARKER"], "w").close()
            time.sleep(60)
        return self.f.write(b)
    def flush(self): return self.f.flush()
_Stalls.saves = 0
def _slow_save(obj, f, *a, **k):
    _Stalls.saves += 1
    return _save(obj, _Stalls(f), *a, **k)
torch.save = _slow_save
'''


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_keeps_the_previous_one(synthetic_shards, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_SAVE)  # runs at interpreter start: a hook at the save boundary
    out, marker = tmp_path / "out", tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "STALL_AT_SAVE": "2", "STALL_MARKER": str(marker)}
    job = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY, f"--data_dir={synthetic_shards}",
                            f"--out_dir={out}", "--max_iters=6", "--eval_interval=2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists() and job.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), job.communicate()[1][-3000:]
    first = (out / "ckpt.pt").read_bytes()  # the step-2 checkpoint; the step-4 one is half written
    assert len(list(out.glob("ckpt.pt.*.tmp"))) == 1  # the half-written one, under its writer's own name
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=30)
    assert (out / "ckpt.pt").read_bytes() == first and load_checkpoint(str(out / "ckpt.pt"))["loop"]["step"] == 2
    run_train(synthetic_shards, out, "--max_iters=6", "--eval_interval=2", "--init_from=resume")
    assert sorted(losses(out)) == list(range(6)) and load_checkpoint(str(out / "ckpt.pt"))["loop"]["step"] == 6
    assert [r["step"] for r in metrics(out)] == list(range(7))


# ----------------------------------------------------------------------------- review follow-ups

def test_auto_decides_from_what_every_rank_sees(tmp_path):
    from fineweb_gpt.distributed import Env

    class TwoRanks(Env):
        def gather(self, obj):  # rank 0 sees out_dir/ckpt.pt, rank 1 (another node) does not
            return [True, False]

    (tmp_path / "ckpt.pt").write_bytes(b"")
    cfg = train.TrainConfig(out_dir=str(tmp_path), init_from="auto")
    with pytest.raises(train.ConfigError, match="exists for ranks \\[0\\] but not for the others"):
        train.checkpoint_to_resume(cfg, TwoRanks("cpu", rank=1, world_size=2, ddp=True))


def test_auto_with_only_the_best_checkpoint_says_what_to_do(synthetic_shards, tmp_path):
    (tmp_path / "ckpt_best.pt").write_bytes(b"best")
    fails_cleanly(train.main, [*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--init_from=auto"],
                  "holds ckpt_best.pt but no ckpt.pt", "copy it to ckpt.pt", untouched=[tmp_path])


def test_dictionary_encoded_text_is_text_and_a_corrupt_zst_is_reported(tiktoken_cache, tmp_path):
    path = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"text": pa.array(["one doc", "two doc", "one doc"]).dictionary_encode()}), path)
    assert prepare.main([f"--input={path}", f"--out_dir={tmp_path / 'o1'}", "--val_docs=1", "--progress=False"])["docs"] == 3
    (tmp_path / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"not really zstd" * 20)
    fails_cleanly(prepare.main, [f"--input={tmp_path / 'bad.jsonl.zst'}", f"--out_dir={tmp_path / 'o2'}",
                                 "--progress=False"], "bad.jsonl.zst: unreadable", "re-download")
    zstandard = pytest.importorskip("zstandard", reason="zstandard is in requirements.txt")
    lines = ("\n".join(json.dumps({"text": f"document {i} " * 30}) for i in range(500)) + "\n").encode()
    whole = zstandard.ZstdCompressor().compress(lines)
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[:len(whole) // 2])  # a download that stopped halfway
    fails_cleanly(prepare.main, [f"--input={tmp_path / 'cut.jsonl.zst'}", f"--out_dir={tmp_path / 'o3'}",
                                 "--progress=False"], "cut.jsonl.zst: unreadable after", "truncated", "re-download")
