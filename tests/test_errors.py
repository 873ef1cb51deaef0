"""Bugs keep their traceback: each script's main() turns a UserError into one line and lets every other
exception through. One loader for trained models; export publishes its folder whole or not at all."""
import ast
import fnmatch
import importlib
import inspect
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import bench
import configurator
import eval as eval_script
import export
import plot
import prepare
import readers
import sample
import train
from conftest import ROOT, TINY, load_script, tiny_model
from fineweb_gpt import checkpoint, inference, tokenizer
from fineweb_gpt.atomic import staged_dir
from fineweb_gpt.errors import UserError
from model import GPT

bench_recipe = load_script("bench/recipe.py")
bench_memory = load_script("bench/memory.py")
bench_prepare = load_script("bench/prepare.py")
bench_sample = load_script("bench/sample.py")

SCRIPTS = [train, sample, eval_script, export, plot, bench, prepare, bench_recipe, bench_memory, bench_prepare,
           bench_sample]


def written_by_runs(folder: str) -> bool:
    """A top-level folder that .gitignore names as the runs' output (out-*/, hf-*/, wandb/...): an export holds
    modeling files that import only beside each other."""
    with open(os.path.join(ROOT, ".gitignore")) as f:
        patterns = [line.strip().lstrip("/") for line in f if line.strip().endswith("/")]
    return any(fnmatch.fnmatch(folder + "/", pattern) for pattern in patterns)


def repository_modules() -> list:
    """Every Python module of the repository but the tests, the config files and what runs write, imported."""
    modules = []
    for dirpath, dirnames, names in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__")) and
                       (dirpath != ROOT or (d not in ("tests", "config") and not written_by_runs(d)))]
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")
            if path.startswith("fineweb_gpt/hf_remote/"):  # copied into exports, imported there beside model.py
                continue
            if path.startswith(("bench/", "scripts/")):  # run by path, not importable by name
                modules.append(sys.modules.get(path.replace("/", "_").removesuffix(".py")) or load_script(path))
            elif path.startswith("fineweb_gpt/"):
                modules.append(importlib.import_module(f"fineweb_gpt.{name[:-3]}".removesuffix(".__init__")))
            else:  # the root and data/fineweb, both on sys.path
                modules.append(importlib.import_module(name[:-3]))
    return modules


def broken(exc: Exception):
    """A stand-in for any function or method: it raises exc, as a bug would."""
    def raise_it(*args, **kwargs):
        raise exc
    return raise_it


# ----------------------------------------------------------------------------- the one root

def test_every_error_class_of_the_code_base_is_a_user_error():
    modules = repository_modules()
    # by name: another test module may have loaded a bench script again, as a new module object
    assert {m.__name__ for m in (configurator, readers, checkpoint, inference, *SCRIPTS)} <= {m.__name__ for m in modules}
    defined = [obj for m in modules for obj in vars(m).values()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == m.__name__]
    assert {c.__name__ for c in defined} >= {"ConfigError", "CheckpointError", "ShardError", "PrepareError",
                                             "TrainingError", "ExportError", "EvalError", "PlotError",
                                             "TokenizerError", "NothingFits", "DeviceError", "HubError", "PromptError"}
    assert [c.__name__ for c in defined if not issubclass(c, UserError)] == []


def handled(function) -> set[str]:
    """The exception names the except clauses of a function catch."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(function).lstrip())):
        if isinstance(node, ast.ExceptHandler):
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            names |= {ast.unparse(t) for t in types}
    return names


@pytest.mark.parametrize("main", [s.main for s in SCRIPTS] + [configurator.run_main, configurator.cli],
                         ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_each_main_catches_user_errors_only(main):
    # ConfigError is a UserError (printed as "config error"); a compile failure surfaces lazily, in the loop
    assert handled(main) <= {"UserError", "ConfigError", "KeyboardInterrupt", "torch._dynamo.exc.BackendCompilerFailed"}


# ----------------------------------------------------------------------------- a bug keeps its traceback

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint as train.py writes it, of a tiny model with GPT-2's vocabulary."""
    out = tmp_path_factory.mktemp("run")
    model = tiny_model(vocab_size=50304)
    checkpoint.save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "loop": {"step": 3},
                                "tokenizer": tokenizer.describe(None)}, str(out / "ckpt.pt"))
    return out


@pytest.mark.parametrize("exc", [ValueError("a shape bug in the loss"), OSError("a bug that reads a wrong path")])
def test_train_lets_a_bug_through(synthetic_shards, tmp_path, monkeypatch, exc):
    monkeypatch.setattr(GPT, "forward", broken(exc))
    with pytest.raises(type(exc), match=str(exc)):
        train.main([*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--max_iters=1"])


def test_train_still_reports_a_user_error_in_one_line(synthetic_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(GPT, "forward", broken(train.TrainingError("the loss diverged")))
    with pytest.raises(SystemExit, match="^train.py: error: the loss diverged$"):
        train.main([*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}", "--max_iters=1"])


def test_sample_lets_a_bug_through(run_dir, tiktoken_cache, monkeypatch):
    monkeypatch.setattr(GPT, "forward", broken(ValueError("a shape bug")))
    with pytest.raises(ValueError, match="a shape bug"):
        sample.main([f"--out_dir={run_dir}", "--device=cpu", "--num_samples=1", "--max_new_tokens=2", "--start=Hi"])


def test_eval_lets_a_bug_through(run_dir, tiktoken_cache, tmp_path, monkeypatch):
    item = {"activity_label": "Sailing", "ctx_a": "A boat sails.", "ctx_b": "the crew", "label": 0,
            "endings": ["waves.", "eats a cake.", "jumps.", "lowers the sail."]}
    (tmp_path / "items.jsonl").write_text(json.dumps(item) + "\n")
    monkeypatch.setattr(GPT, "forward", broken(RuntimeError("a device bug")))
    with pytest.raises(RuntimeError, match="a device bug"):
        eval_script.main([f"--out_dir={run_dir}", "--device=cpu", f"--data_file={tmp_path / 'items.jsonl'}",
                          "--progress=False"])


def test_export_lets_a_bug_in_building_the_model_through(run_dir, tmp_path, monkeypatch):
    # a RuntimeError while building the transformers model is no full disk
    monkeypatch.setattr(export, "to_hf_model", broken(RuntimeError("size mismatch for lm_head.weight")))
    with pytest.raises(RuntimeError, match="size mismatch"):
        export.main([f"--out_dir={run_dir}", f"--hf_dir={tmp_path / 'hf'}"])
    assert os.listdir(tmp_path) == []  # and nothing was left behind


def test_plot_lets_a_bug_through(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "tokens": 0, "val_loss": 10.0}) + "\n")
    monkeypatch.setattr(plot, "read_metrics", broken(KeyError("a bug's key")))
    with pytest.raises(KeyError, match="a bug's key"):
        plot.main([str(tmp_path), f"--out={tmp_path / 'loss.png'}"])


def test_bench_lets_a_bug_through(monkeypatch):
    monkeypatch.setattr(GPT, "forward", broken(ValueError("a shape bug")))
    with pytest.raises(ValueError, match="a shape bug"):
        bench.main([*TINY, "--warmup_steps=0", "--timed_steps=1"])


def test_bench_recipe_lets_a_bug_through(monkeypatch):
    monkeypatch.setattr(bench_recipe, "make_optimizer", broken(RuntimeError("a bug in the optimizer")))
    with pytest.raises(RuntimeError, match="a bug in the optimizer"):
        bench_recipe.main(["--train_runs=False", "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=16"])


def test_bench_memory_lets_a_bug_through(monkeypatch):
    monkeypatch.setattr(bench_memory, "measure", broken(OSError("a bug that reads a wrong path")))
    with pytest.raises(OSError, match="a wrong path"):
        bench_memory.main(["--variants=plain"])


def test_bench_prepare_lets_a_bug_through(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_prepare, "read_texts", broken(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        bench_prepare.main([f"--input={tmp_path}", f"--work_dir={tmp_path}"])


def test_bench_sample_lets_a_bug_through(monkeypatch):
    monkeypatch.setattr(bench_sample, "GPT", broken(RuntimeError("a bug in the model")))
    with pytest.raises(RuntimeError, match="a bug in the model"):
        bench_sample.main(["--device=cpu", "--lengths=4"])


def test_bench_sample_reports_bad_lengths_in_one_line():
    with pytest.raises(SystemExit, match="lengths must be comma-separated whole numbers, got '4,x'"):
        bench_sample.main(["--device=cpu", "--lengths=4,x"])


def test_prepare_lets_a_bug_through(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "expand_inputs", broken(OSError("a bug that reads a wrong path")))
    with pytest.raises(OSError, match="a wrong path"):
        prepare.main([f"--input={tmp_path / 'a.parquet'}", f"--out_dir={tmp_path / 'out'}", "--progress=False"])


@pytest.mark.slow
def test_a_bug_in_train_py_prints_its_traceback(synthetic_shards, tmp_path):
    script = ("import sys, model; "
              "model.GPT.forward = lambda *a, **k: (_ for _ in ()).throw(ValueError('a shape bug in the loss')); "
              "import train; train.main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", script, *TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}",
                        "--max_iters=1"], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "ValueError: a shape bug in the loss" in r.stderr
    assert "train.py: error" not in r.stderr


# ----------------------------------------------------------------------------- one loader for a trained model

def test_sample_eval_and_export_refuse_to_decode_a_small_vocabulary_as_gpt2(tmp_path):
    model = tiny_model(vocab_size=65)  # a character-level model from another trainer: no tokenizer recorded
    checkpoint.save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config)},
                               str(tmp_path / "ckpt.pt"))
    messages = {}
    for name, main, extra in (("sample.py", sample.main, []), ("eval.py", eval_script.main, ["--data_file=x.jsonl"]),
                              ("export.py", export.main, [f"--hf_dir={tmp_path / 'hf'}"])):
        with pytest.raises(SystemExit) as exit_:
            main([f"--out_dir={tmp_path}", "--device=cpu", *extra] if name != "export.py" else
                 [f"--out_dir={tmp_path}", *extra])
        prefix = f"{name}: error: "
        assert str(exit_.value.code).startswith(prefix)
        messages[name] = str(exit_.value.code)[len(prefix):]
    assert "records no tokenizer" in messages["sample.py"] and "65 embeddings" in messages["sample.py"]
    assert messages["eval.py"] == messages["sample.py"] == messages["export.py"]
    assert not (tmp_path / "hf").exists()


def test_the_loader_reads_a_checkpoint_with_its_tokenizer_and_step(run_dir, tmp_path):
    loaded = inference.load_for_inference(str(run_dir))
    assert not loaded.model.training and loaded.step == 3 and loaded.tokenizer == tokenizer.describe(None)
    other = tiny_model(vocab_size=50304)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)  # weights no checkpoint in run_dir holds
    path = tmp_path / "ckpt_best.pt"
    checkpoint.save_checkpoint({"model": other.state_dict(), "model_args": asdict(other.config), "loop": {"step": 7},
                                "tokenizer": tokenizer.describe(None)}, str(path))
    best = inference.load_for_inference(str(run_dir), ckpt=str(path))  # the file asked for, not out_dir's latest
    assert best.step == 7
    assert all(torch.equal(a, b) for a, b in zip(best.model.state_dict().values(), other.state_dict().values()))


# ----------------------------------------------------------------------------- publishing a folder

def files(folder) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_staged_write_leaves_the_target_as_it_was(tmp_path, interruption):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "config.json").write_text("old")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(interruption):
        with staged_dir(str(target), prefix=".export-") as staging:
            with open(os.path.join(staging, "config.json"), "w") as f:
                f.write("new")
            raise interruption()
    assert files(target) == {"config.json": b"old", "notes.txt": b"mine"}
    assert os.listdir(tmp_path) == ["hf"]  # no staging folder left


def test_a_finished_staged_write_publishes_every_file_and_keeps_the_others(tmp_path):
    target = tmp_path / "hf"
    with staged_dir(str(target)) as staging:
        for name in ("config.json", "model.safetensors"):
            with open(os.path.join(staging, name), "w") as f:
                f.write(f"new {name}")
        assert not target.exists()  # nothing shows before the block ends
    assert files(target) == {"config.json": b"new config.json", "model.safetensors": b"new model.safetensors"}
    (target / "notes.txt").write_text("mine")
    with staged_dir(str(target)) as staging:
        with open(os.path.join(staging, "config.json"), "w") as f:
            f.write("newer")
    assert files(target) == {"config.json": b"newer", "model.safetensors": b"new model.safetensors",
                             "notes.txt": b"mine"}
    assert os.listdir(tmp_path) == ["hf"]


def test_an_interrupted_export_keeps_the_previous_export(run_dir, tmp_path, monkeypatch):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    previous = {"config.json": b"previous config", "model.safetensors": b"previous weights"}
    for name, data in previous.items():
        (hf_dir / name).write_bytes(data)

    class HalfWritten:
        def save_pretrained(self, folder):
            with open(os.path.join(folder, "config.json"), "w") as f:
                f.write("new config")
            raise KeyboardInterrupt  # Ctrl-C before the weights are written

    monkeypatch.setattr(export, "to_hf_model", lambda *args: HalfWritten())
    with pytest.raises(KeyboardInterrupt):
        export.main([f"--out_dir={run_dir}", f"--hf_dir={hf_dir}", "--overwrite=True"])
    assert files(hf_dir) == previous
    assert os.listdir(tmp_path) == ["hf"]
