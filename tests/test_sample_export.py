"""sample.py and export.py on a checkpoint trained from real FineWeb tokens."""
import io
import os
import subprocess
import sys

import pytest
import torch

import export
import sample
import train
from fineweb_gpt.checkpoint import load_model
from configurator import ConfigError, parse_config
from conftest import ROOT, TINY
from fineweb_gpt.generation import generate


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.train(parse_config(train.TrainConfig, [*TINY, f"--data_dir={shards}", f"--out_dir={out}",
                                                 "--max_iters=30", "--eval_interval=15", "--learning_rate=1e-2"]))
    return str(out)


def run_sample(out_dir, *args):
    buf = io.StringIO()
    texts = sample.sample(parse_config(sample.SampleConfig, [f"--out_dir={out_dir}", "--device=cpu", *args]), out=buf)
    return texts, buf.getvalue()


def test_sample_produces_text_streams_it_and_repeats_with_a_seed(trained, tiktoken_cache):
    texts, printed = run_sample(trained, "--start=The court", "--num_samples=3", "--max_new_tokens=12")
    assert len(texts) == 3 and all(t.startswith("The court") for t in texts)
    assert any(len(t) > len("The court") for t in texts)
    assert texts[0] in printed and "sample 3 of 3" in printed  # first streamed, the rest printed after
    again, _ = run_sample(trained, "--start=The court", "--num_samples=3", "--max_new_tokens=12")
    assert again == texts
    other, _ = run_sample(trained, "--start=The court", "--num_samples=3", "--max_new_tokens=12", "--seed=7")
    assert other != texts


def test_greedy_sampling_is_the_same_with_and_without_the_cache(trained, tiktoken_cache):
    args = ["--start=The law", "--num_samples=2", "--max_new_tokens=20", "--temperature=0", "--stop_at_eot=False"]
    cached, _ = run_sample(trained, *args)
    uncached, _ = run_sample(trained, *args, "--kv_cache=False")
    assert cached == uncached


def test_prompt_from_file_best_checkpoint_and_capped_length(trained, tiktoken_cache, tmp_path, capsys):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Section 1.")
    texts, _ = run_sample(trained, f"--start=FILE:{prompt}", "--ckpt=best", "--num_samples=1", "--max_new_tokens=500")
    assert texts[0].startswith("Section 1.")
    assert "max_new_tokens lowered from 500 to" in capsys.readouterr().err


@pytest.mark.slow
def test_sample_errors_are_clear(tmp_path, tiktoken_cache):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={tmp_path}"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no checkpoint at" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={tmp_path}"],
                       capture_output=True, text=True)
    assert "not a readable checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_impossible_sampling_settings_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="(?s)'num_samples' must be >= 1, got 0.*'temperature' must be >= 0.*'top_k' "
                                         "must be >= 0.*'top_p' must be in \\(0, 1\\], got 0.0"):
        parse_config(sample.SampleConfig, [f"--out_dir={tmp_path}", "--num_samples=0", "--temperature=-1",
                                           "--top_p=0", "--top_k=-3"])


@pytest.mark.slow  # an export loaded in transformers
def test_export_loads_in_transformers_with_the_same_logits_and_text(trained, tiktoken_cache, tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is needed to load the export")
    hf_dir = str(tmp_path / "hf")
    export.export(parse_config(export.ExportConfig, [f"--out_dir={trained}", f"--hf_dir={hf_dir}"]))
    assert "GPT2LMHeadModel (transformers' own architecture)" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json"} <= set(os.listdir(hf_dir))
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.vocab_size == 50257
    ours, _ = load_model(os.path.join(trained, "ckpt.pt"))
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = torch.tensor([tok.encode("The court held that the")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0][..., :50257], atol=1e-4, rtol=1e-4)
        hf_greedy = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=50256)[0, ids.size(1):]
    our_greedy = torch.cat(list(generate(ours, ids, 10, temperature=0)), 1)[0]
    assert hf_greedy.tolist() == our_greedy.tolist()


@pytest.fixture
def fake_gpt2_hub(monkeypatch):
    """GPT2LMHeadModel.from_pretrained('gpt2') answered by a tiny random GPT-2 (the hub is unreachable here)."""
    transformers = pytest.importorskip("transformers", reason="transformers is needed for init_from=gpt2")
    torch.manual_seed(0)
    tiny = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32,
                                                                n_layer=2, n_head=2)).eval()
    asked = []

    def from_pretrained(name, *a, **kw):
        asked.append(name)
        return tiny

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", from_pretrained)
    return tiny, asked


def test_init_from_gpt2_in_sample_and_train(fake_gpt2_hub, shards, tiktoken_cache, tmp_path):
    tiny, asked = fake_gpt2_hub
    texts, _ = run_sample(str(tmp_path), "--init_from=gpt2", "--num_samples=1", "--max_new_tokens=5",
                          "--temperature=0", "--stop_at_eot=False", "--start=Hello")
    ids = torch.tensor([[15496]])  # "Hello"
    with torch.no_grad():
        expected = tiny.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=50256)[0]
    import tiktoken
    assert texts[0] == tiktoken.get_encoding("gpt2").decode(expected.tolist())
    result = train.train(parse_config(train.TrainConfig, [*TINY, f"--data_dir={shards}", f"--out_dir={tmp_path / 'ft'}",
                                                          "--init_from=gpt2-medium", "--max_iters=2"]))
    assert asked == ["gpt2", "gpt2-medium"] and result["step"] == 2


def test_export_of_an_option_set_no_architecture_computes_carries_our_model_code(tmp_path, capsys):
    # loaded and compared with our logits in tests/test_hf_interop.py; here: what export.py writes and says
    import json
    from dataclasses import asdict

    from fineweb_gpt.checkpoint import save_checkpoint
    from conftest import OPTION_SETS, tiny_model
    from export import ExportConfig, export
    from fineweb_gpt.tokenizer import describe
    model = tiny_model(**OPTION_SETS["modern"])
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config),  # train.py records a tokenizer
                     "tokenizer": describe(None)}, str(tmp_path / "ckpt.pt"))
    hf_dir = tmp_path / "hf"
    export(ExportConfig(out_dir=str(tmp_path), hf_dir=str(hf_dir), tokenizer_files=False))
    assert sorted(os.listdir(hf_dir)) == ["config.json", "configuration_fineweb_gpt.py", "model.py",
                                          "model.safetensors", "modeling_fineweb_gpt.py"]
    assert (hf_dir / "model.py").read_bytes() == open(os.path.join(ROOT, "model.py"), "rb").read()
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_fineweb_gpt.FinewebGPTForCausalLM"
    assert {k: config[k] for k in asdict(model.config)} == asdict(model.config)  # vocab 256 < GPT-2's: kept
    printed = capsys.readouterr().out
    assert "FinewebGPTForCausalLM (this project's model.py in the folder" in printed
    assert f"from_pretrained({str(hf_dir)!r}, trust_remote_code=True)" in printed


def test_export_files_get_the_same_permissions_as_any_new_file(tmp_path):
    from dataclasses import asdict

    from fineweb_gpt.checkpoint import save_checkpoint
    from fineweb_gpt import tokenizer
    from conftest import tiny_model
    model = tiny_model()
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config),
                     "tokenizer": tokenizer.describe(None)}, str(tmp_path / "ckpt.pt"))
    previous = os.umask(0o022)
    try:
        export.export(export.ExportConfig(out_dir=str(tmp_path), hf_dir=str(tmp_path / "hf"), tokenizer_files=False))
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / "hf" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "hf")}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
