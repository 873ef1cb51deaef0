"""eval.py's HellaSwag scoring: lm-evaluation-harness's text and normalisation, a model whose preference we set,
and the same log-likelihoods from the checkpoint's Hugging Face export."""
import json
from dataclasses import asdict

import pytest
import torch

import eval as hellaswag
from fineweb_gpt import tokenizer
from fineweb_gpt.checkpoint import save_checkpoint
from model import GPT, GPTConfig

# Items in the Hub dataset's schema (Rowan/hellaswag: label is a string there), one of them WikiHow-style
ITEMS = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "endings": [
         "is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
         "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs "
     "the pole.", "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."],
     "source_id": "activitynet~v_-lJS58hyo1c", "split": "val", "split_type": "zeroshot", "label": "3"},
    {"ind": 5000, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Heat the "
     "grill. [step] Turn it on high.", "ctx_b": "", "ctx": "[header] How to clean a grill [title] Heat the grill. "
     "[step] Turn it on high.", "endings": [
         "[substeps] Wait ten minutes.", "Paint the grill red.", "Scrub the grates with a wire brush.",
         "Sing to the grill."],
     "source_id": "wikihow~1234", "split": "val", "split_type": "indomain", "label": "2"},
    {"ind": 7, "activity_label": "Sailing", "ctx_a": "A boat sails on a lake.", "ctx_b": "the crew",
     "ctx": "A boat sails on a lake. the crew", "endings": [
         "waves to the shore.", "eats a cake.", "jumps into the water.", "lowers the sail."],
     "source_id": "activitynet~v_x", "split": "val", "split_type": "indomain", "label": "0"},
]
# The harness's contexts for them, written out by hand: label + ": ", ctx_b capitalized, WikiHow markup gone
CONTEXTS = ["Roof shingle removal: A man is sitting on a roof. He",
            "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",
            "Home and Garden: How to clean a grill. Heat the grill. Turn it on high.",
            "Sailing: A boat sails on a lake. The crew"]
PREFERRED = [3, 0, 2, 0]  # the endings the model is trained to prefer: right, wrong, right, right


def test_text_is_rendered_as_the_harness_does():
    for doc, context in zip(ITEMS, CONTEXTS):
        assert hellaswag.render(doc)[0] == context
    # markup dropped from endings too; the harness strips before it drops, so the space after it stays
    assert hellaswag.render(ITEMS[2])[1][:2] == [" Wait ten minutes.", "Paint the grill red."]
    assert hellaswag.render(ITEMS[0])[2] == 3  # the Hub's string label


def test_a_contexts_trailing_space_moves_to_the_continuation(tiktoken_cache):
    enc = tokenizer.load_encoding("gpt2")
    # "...grill. " (markup removed at the end) must be scored as "...grill." then "  Scrub", as the harness splits it
    whole, n = hellaswag.encode(enc, "Heat the grill. ", " Scrub the grates.")
    assert whole == enc.encode_ordinary("Heat the grill.  Scrub the grates.")
    assert whole[:-n] == enc.encode_ordinary("Heat the grill.")
    assert hellaswag.encode(enc, "Heat the grill.", " Scrub")[0] == enc.encode_ordinary("Heat the grill. Scrub")


def test_acc_norm_divides_by_the_endings_characters():
    # the longer ending has the lower sum but the higher log-likelihood per character
    assert hellaswag.predictions([-10.0, -12.0], ["short", "a much longer ending"]) == (0, 1)
    assert hellaswag.predictions([-3.0, -12.0], ["short", "a much longer ending"]) == (0, 0)


@pytest.fixture(scope="module")
def preferring_run(tmp_path_factory, tiktoken_cache):
    """A tiny GPT-2-shaped model overfit on context + preferred ending of each item, saved as a checkpoint."""
    enc = tokenizer.load_encoding("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32))
    rows = [enc.encode_ordinary(f"{c} {hellaswag.render(d)[1][k]}") for c, d, k in zip(CONTEXTS, ITEMS, PREFERRED)]
    width = max(map(len, rows))
    x = torch.tensor([r[:-1] + [0] * (width - len(r)) for r in rows])
    # targets: the preferred ending's tokens only (-1 = ignored), so training shapes exactly that choice
    starts = [len(enc.encode_ordinary(c)) for c in CONTEXTS]
    y = torch.tensor([[t if p >= s else -1 for p, t in enumerate(r[1:], 1)] + [-1] * (width - len(r))
                      for r, s in zip(rows, starts)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    for _ in range(60):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1, loss.item()
    out = tmp_path_factory.mktemp("preferring")
    save_checkpoint({"model": model.state_dict(), "model_args": asdict(model.config), "tokenizer": tokenizer.GPT2},
                    str(out / "ckpt.pt"))
    data_file = out / "hellaswag_val.jsonl"
    data_file.write_text("".join(json.dumps(d) + "\n" for d in ITEMS))
    return model.eval(), out, data_file


def test_scores_follow_the_models_preference(preferring_run, capsys):
    _, out, data_file = preferring_run
    hellaswag.main([f"--out_dir={out}", f"--data_file={data_file}", "--device=cpu", "--batch_size=3"])
    printed = capsys.readouterr().out
    assert "hellaswag: 4 items | acc 0.7500 | acc_norm 0.7500" in printed  # 3 of 4 preferences are the label
    assert "not comparable" in printed and "acc_norm 0.3114" in printed  # a subset, next to the references


@pytest.mark.slow  # builds two transformers exports
def test_log_likelihoods_equal_the_hf_exports(preferring_run, tiktoken_cache):
    from fineweb_gpt.hf_interop import to_hf_model
    model, _, _ = preferring_run
    enc = tokenizer.load_encoding("gpt2")
    ours = hellaswag.score(model, enc, ITEMS, "cpu", torch.autocast("cpu", enabled=False), batch_size=2)
    assert [r["pred"] for r in ours["results"]] == PREFERRED
    hf = to_hf_model(model, vocab_size=50257)
    for doc, context, result in zip(ITEMS, CONTEXTS, ours["results"]):
        expected = []
        for ending in hellaswag.render(doc)[1]:  # the rendered text is checked above
            ids = enc.encode_ordinary(f"{context} {ending}")
            n = len(ids) - len(enc.encode_ordinary(context))
            with torch.no_grad():
                logprobs = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
            expected.append(sum(logprobs[p - 1, ids[p]].item() for p in range(len(ids) - n, len(ids))))
        assert result["logliks"] == pytest.approx(expected, abs=1e-4)
        assert result["pred"] == max(range(4), key=lambda i: expected[i])


def test_offline_and_bad_data_say_what_to_do(preferring_run, tmp_path, monkeypatch):
    import datasets
    _, out, _ = preferring_run

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(SystemExit, match=r"(?s)could not load Rowan/hellaswag.*pass --data_file=PATH"):
        hellaswag.main([f"--out_dir={out}", "--device=cpu"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ITEMS[0]) + "\n" + json.dumps({**ITEMS[1], "endings": ["one"]}) + "\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not a HellaSwag item \('endings' is not a list of 4"):
        hellaswag.main([f"--out_dir={out}", f"--data_file={bad}", "--device=cpu"])
    bad.write_text(json.dumps({"activity_label": "x", "endings": ["a"] * 4, "label": 0}) + "\n")
    with pytest.raises(SystemExit) as e:
        hellaswag.main([f"--out_dir={out}", f"--data_file={bad}", "--device=cpu"])
    assert str(e.value).splitlines() == [  # what is missing and what a line holds, in two short lines
        f"eval.py: error: {bad}:1: not a HellaSwag item (no 'ctx' (nor 'ctx_a' and 'ctx_b'))",
        f"each line needs {hellaswag.ITEM_FIELDS}"]
    bad.write_text(json.dumps({k: v for k, v in ITEMS[0].items() if k != "label"} | {"split": "test"}) + "\n")
    with pytest.raises(SystemExit, match="the test split has no labels: score the validation split"):
        hellaswag.main([f"--out_dir={out}", f"--data_file={bad}", "--device=cpu"])


def test_an_item_with_only_the_combined_ctx_is_read_as_written(tmp_path):
    combined = {k: v for k, v in ITEMS[0].items() if k not in ("ctx_a", "ctx_b")}
    path = tmp_path / "ctx_only.jsonl"
    path.write_text(json.dumps(combined) + "\n")
    [doc] = hellaswag.read_items(str(path))
    assert hellaswag.render(doc)[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert hellaswag.render(ITEMS[0])[0] == CONTEXTS[0]  # with ctx_a and ctx_b, the harness's capitalisation
