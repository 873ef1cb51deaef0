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
