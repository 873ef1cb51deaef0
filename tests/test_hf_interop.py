"""GPT-2 weights in and out: a transformers GPT2LMHeadModel and our GPT give the same logits."""
import pytest
import torch

from fineweb_gpt.hf_interop import HubError, from_hf, from_pretrained, to_hf_state_dict


def _tiny_hf():
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the GPT-2 parity tests")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.slow  # builds a transformers GPT-2
def test_hf_gpt2_weights_load_with_identical_logits():
    hf = _tiny_hf()
    ours = from_hf(hf).eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_hf_state_dict_round_trips():
    hf = _tiny_hf()
    ours = from_hf(hf)
    sd = to_hf_state_dict(ours)
    hf_sd = hf.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, hf_sd[k]), k


def test_gpt2_offline_failure_is_clear(monkeypatch):
    transformers = pytest.importorskip("transformers", reason="transformers is needed for init_from=gpt2")

    def offline(*a, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", offline)
    with pytest.raises(HubError, match="could not load gpt2 .* check your connection"):
        from_pretrained("gpt2")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("options", ["gpt2", "qwen3"])
def test_export_computes_our_logits(options, tied):
    # padded vocabulary (320 rows) exported as the tokenizer's 300; random weights everywhere
    pytest.importorskip("transformers", reason="transformers is needed for the export parity tests")
    from conftest import OPTION_SETS, scrambled_model
    from fineweb_gpt.hf_interop import hf_architecture, to_hf_model
    extra = {"rope_theta": 5e5} if options == "qwen3" else {}  # a base other than the default reaches the config
    model = scrambled_model(**{**OPTION_SETS[options], "tie_embeddings": tied, **extra}, vocab_size=320)
    hf = to_hf_model(model, vocab_size=300)
    assert type(hf).__name__ == hf_architecture(model.config) == {"gpt2": "GPT2LMHeadModel",
                                                                   "qwen3": "Qwen3ForCausalLM"}[options]
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0][..., :300], atol=1e-5, rtol=1e-5)


def test_an_option_set_no_architecture_computes_is_refused_by_name():
    from conftest import OPTION_SETS
    from fineweb_gpt.hf_interop import hf_architecture
    from model import GPTConfig
    with pytest.raises(ValueError, match=r"Qwen3ForCausalLM differs in mlp='relu2' \(needs 'swiglu'\), "
                                         r"logit_softcap=15.0 \(needs 0.0\)"):
        hf_architecture(GPTConfig(**OPTION_SETS["modern"]))


# Option sets that no transformers architecture computes: each exports as FinewebGPTForCausalLM, our model.py
# in the folder (trust_remote_code=True). Every option model.py gains belongs here, alone and combined.
REMOTE_CODE_OPTION_SETS = {
    "relu2": dict(mlp="relu2"),  # GPT-2 otherwise: learned positions, LayerNorm, a tied head
    "softcap": dict(logit_softcap=15.0),
    "rope+layernorm": dict(pos_emb="rope"),
    "qwen3+bias+tied": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", bias=True),
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False,
                   logit_softcap=15.0, zero_init_proj=True, bias=False),
    # the record line's options: value embeddings, x0 lambdas, U-net skips, documents and sliding windows
    "record": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False,
                   logit_softcap=15.0, bias=False, init="nanochat", value_embeds=1, x0_lambdas=True, unet_skips=True,
                   doc_causal=True, eot_token=299, attn_window=4, window_pattern="SL"),
}
# the architectures' own option sets, through the same export and load
ARCHITECTURE_OPTION_SETS = {"gpt2": ({}, "GPT2LMHeadModel"),
                            "qwen3": (dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu",
                                           tie_embeddings=False, bias=False), "Qwen3ForCausalLM")}
EXPORT_VOCAB, PADDED_VOCAB, EOT = 300, 320, 299


def test_every_option_outside_an_architecture_must_be_at_its_default():
    # an option model.py gains is pinned to its default for GPT-2 and Qwen3 until it is mapped onto them
    from dataclasses import fields

    from fineweb_gpt.hf_interop import ANY_VALUE, ARCHITECTURES, REMOTE_CODE, export_kind, needs
    from model import GPTConfig
    for arch in ARCHITECTURES:
        assert set(needs(arch)) == {f.name for f in fields(GPTConfig)} - ANY_VALUE | set(ARCHITECTURES[arch])
    qwen3 = ARCHITECTURE_OPTION_SETS["qwen3"][0]
    assert export_kind(GPTConfig(**qwen3)) == "Qwen3ForCausalLM"
    for new in (dict(value_embeds=1), dict(x0_lambdas=True), dict(unet_skips=True), dict(doc_causal=True),
                dict(attn_window=16)):
        assert export_kind(GPTConfig(**qwen3, **new)) == export_kind(GPTConfig(**new)) == REMOTE_CODE, new
    for options in REMOTE_CODE_OPTION_SETS.values():
        assert export_kind(GPTConfig(**options)) == REMOTE_CODE


def test_options_that_change_nothing_computed_keep_an_architecture():
    from fineweb_gpt.hf_interop import REMOTE_CODE, export_kind
    from model import GPTConfig
    qwen3 = ARCHITECTURE_OPTION_SETS["qwen3"][0]
    # nanochat's initial weights; a window pattern without a window
    assert export_kind(GPTConfig(**qwen3, init="nanochat")) == "Qwen3ForCausalLM"
    assert export_kind(GPTConfig(**qwen3, window_pattern="SL")) == "Qwen3ForCausalLM"
    assert export_kind(GPTConfig(window_pattern="L")) == "GPT2LMHeadModel"
    assert export_kind(GPTConfig(**qwen3, window_pattern="SL", attn_window=16)) == REMOTE_CODE


LOAD_EXPORTS = """
import json, sys
import torch, transformers
folders, inputs, out = json.loads(sys.argv[1]), torch.load(sys.argv[2]), sys.argv[3]
results = {}
for name, folder in folders.items():
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = hf(inputs["idx"]).logits
        generated = hf.generate(inputs["prompt"], max_new_tokens=inputs["new"], do_sample=False)
    results[name] = dict(type=type(hf).__name__, logits=logits, generated=generated)
    if name in inputs["remote"]:  # right padding leaves the real positions alone; left padding is refused
        mask = torch.ones_like(inputs["idx"])
        mask[:, -4:] = 0
        with torch.no_grad():
            results[name]["right_padded"] = hf(inputs["idx"], attention_mask=mask).logits[:, :-4]
        try:
            hf(inputs["idx"], attention_mask=mask.flip(1))
        except ValueError as e:
            results[name]["left_padding_refused"] = "right padding" in str(e)
results["imported our model.py"] = "model" in sys.modules  # not: each folder's own copy ran
torch.save(results, out)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every option set above exported (padded vocabulary cropped) and loaded by transformers in one offline
    process: our models, and what transformers computed from each folder."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("transformers", reason="transformers is needed to load the exports")
    from conftest import scrambled_model
    from export import model_writer
    from fineweb_gpt.hf_interop import export_kind
    tmp = tmp_path_factory.mktemp("exports")
    models, folders, kinds = {}, {}, {}
    option_sets = {**{k: (v, None) for k, v in REMOTE_CODE_OPTION_SETS.items()}, **ARCHITECTURE_OPTION_SETS}
    for name, (options, _) in option_sets.items():
        model = scrambled_model(**options, vocab_size=PADDED_VOCAB)
        with torch.no_grad():  # padding rows never win a greedy choice, as after training
            model.lm_head.weight[EXPORT_VOCAB:] = 0
        folders[name] = str(tmp / name.replace("+", "_"))
        os.makedirs(folders[name])
        model_writer(model, EXPORT_VOCAB, EOT)(folders[name])  # as export.py writes it
        kinds[name] = export_kind(model.config)
        models[name] = model
    torch.manual_seed(0)
    inputs = dict(idx=torch.randint(0, EXPORT_VOCAB, (2, 32)), prompt=torch.randint(0, EXPORT_VOCAB, (1, 8)), new=8,
                  remote=list(REMOTE_CODE_OPTION_SETS))
    torch.save(inputs, tmp / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules")}
    subprocess.run([sys.executable, "-c", LOAD_EXPORTS, json.dumps(folders), str(tmp / "inputs.pt"),
                    str(tmp / "results.pt")], check=True, env=env, cwd=str(tmp), timeout=600)
    results = torch.load(tmp / "results.pt")
    assert results.pop("imported our model.py") is False
    return models, kinds, inputs, results


@pytest.mark.slow  # a transformers process loads every export
@pytest.mark.parametrize("name", [*REMOTE_CODE_OPTION_SETS, *ARCHITECTURE_OPTION_SETS])
def test_export_loads_offline_with_our_logits_and_greedy_tokens(exported, name):
    from fineweb_gpt.generation import generate
    from fineweb_gpt.hf_interop import REMOTE_CODE
    models, kinds, inputs, results = exported
    model, result = models[name], results[name]
    expected = ARCHITECTURE_OPTION_SETS[name][1] if name in ARCHITECTURE_OPTION_SETS else REMOTE_CODE
    assert kinds[name] == result["type"] == expected
    with torch.no_grad():  # fp32 both sides; the tolerance covers kernel choices between two processes
        torch.testing.assert_close(result["logits"], model(inputs["idx"])[0][..., :EXPORT_VOCAB], atol=1e-5, rtol=1e-5)
    ours = torch.cat(list(generate(model, inputs["prompt"], inputs["new"], temperature=0, eot=EOT)), 1)
    assert result["generated"][:, inputs["prompt"].size(1):].tolist() == ours.tolist()
    if expected == REMOTE_CODE:
        torch.testing.assert_close(result["right_padded"], result["logits"][:, :-4], atol=1e-5, rtol=1e-5)
        assert result["left_padding_refused"] is True
