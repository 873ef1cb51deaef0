"""Score a checkpoint on HellaSwag validation (10,042 items) the way lm-evaluation-harness does.

    python eval.py --out_dir=out-fineweb --task=hellaswag
    python eval.py --out_dir=out-fineweb --data_file=hellaswag_val.jsonl    # offline: the split as JSON lines
    python eval.py --init_from=gpt2                                          # OpenAI's GPT-2 124M, for comparison

The protocol is lm-evaluation-harness's `hellaswag` task (lm_eval/tasks/hellaswag/utils.py and the
harness's multiple-choice scoring), zero-shot:
  - context = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()) (an item with only
    the combined `ctx` uses it as written: ctx_b's first letter then stays lower case); each ending is
    preprocess(ending); preprocess strips, turns " [title]" into ". ", drops other [bracketed] WikiHow
    markup and collapses double spaces.
  - each ending is scored as the continuation " " + ending: the sum of its tokens' log-probabilities
    given the context (tokens of context + continuation encoded together, the continuation's being
    those after the context's own encoding, as the harness does; the context is cut from the left if
    the whole does not fit block_size).
  - acc: the ending with the largest sum is the label. acc_norm: the largest sum divided by the
    ending's length in characters (without the leading space), the harness's normalisation.
    llm.c's dev/data/hellaswag.py differs on both counts (raw ctx, and it normalises by the number
    of tokens), so its numbers for the same model are lower: see REFERENCES.
Log-probabilities are over the tokenizer's vocabulary only (embedding rows added to pad it are
left out), so a checkpoint scores exactly as its export.py folder does in transformers.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch

from fineweb_gpt import hardware
from fineweb_gpt import report
from fineweb_gpt import tokenizer
from configurator import check_values, key, run_main
from fineweb_gpt.errors import UserError
from fineweb_gpt.hf_interop import GPT2_MODELS
from fineweb_gpt.inference import load_for_inference
from model import GPT

HELLASWAG_HUB_ID = "Rowan/hellaswag"  # the dataset lm-evaluation-harness loads
HELLASWAG_ITEMS = 10042  # validation split
# Published scores on the same validation split, printed next to ours (see the module docstring for protocols)
REFERENCES = [
    "random guessing: acc = acc_norm = 0.25 (4 endings)",
    "GPT-2 124M, lm-evaluation-harness (this protocol): acc 0.2892, acc_norm 0.3114",
    "GPT-2 124M, llm.c's hellaswag.py (raw ctx, per-token norm): acc 0.2859, acc_norm 0.2955",
    "GPT-2 XL 1558M, lm-evaluation-harness: acc 0.4004, acc_norm 0.5089",
    "(all three GPT-2 rows as quoted in llm.c's dev/data/hellaswag.py)",
]
# What one line of --data_file holds; both published forms of the validation split have every field
# (github.com/rowanz/hellaswag's data/hellaswag_val.jsonl, and the Hub dataset saved as JSON lines);
# other fields (ind, source_id, split, ...) are ignored.
ITEM_FIELDS = "activity_label, ctx (or ctx_a and ctx_b), endings (4 strings), label (0-3)"
OFFLINE_HINT = (f"offline, pass --data_file=PATH: the validation split as JSON lines with {ITEM_FIELDS}, "
                f"e.g. hellaswag_val.jsonl from github.com/rowanz/hellaswag (data/)")


@dataclass
class EvalConfig:
    out_dir: str = key("out-fineweb", "run directory holding the checkpoint")
    ckpt: str = key("latest", "'latest' (ckpt.pt), 'best' (ckpt_best.pt) or a checkpoint file path")
    init_from: str = key("resume", "'resume' (a checkpoint from out_dir) or gpt2, gpt2-medium, gpt2-large, gpt2-xl",
                         choices=("resume", *GPT2_MODELS))
    task: str = key("hellaswag", "benchmark to score", choices=("hellaswag",))
    data_file: str = key("", f"local JSON lines of the validation split, each with {ITEM_FIELDS} ('' = "
                             f"{HELLASWAG_HUB_ID} via datasets)")
    limit: int = key(0, "score only the first this many items (0 = all)", range="[0, inf)")
    batch_size: int = key(8, "items per forward pass (4 sequences each)", range="[1, inf)")
    device: str = key("auto", "'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = key("float32", "'float32' (no autocast), or 'auto' / 'bfloat16' / 'float16' "
                     "autocast: faster on a GPU, and a near tie between endings can then flip",
                     choices=hardware.DTYPES)
    progress: bool = key(True, "show a progress bar")


class EvalError(UserError):
    """The benchmark data or the model cannot be used; the message says what to do."""


# ------------------------------------------------------------------ the task, as lm-evaluation-harness defines it

def preprocess(text: str) -> str:
    """HellaSwag's WikiHow markup removed, as lm-evaluation-harness's hellaswag preprocess does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def render(doc: dict) -> tuple[str, list[str], int]:
    """(context, the 4 endings, index of the right one) of a dataset item."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize() if "ctx_a" in doc and "ctx_b" in doc else doc["ctx"]
    context = preprocess(doc["activity_label"] + ": " + ctx)
    return context, [preprocess(e) for e in doc["endings"]], int(doc["label"])


def encode(enc, context: str, continuation: str) -> tuple[list[int], int]:
    """(tokens of context + continuation, how many of them are the continuation's): the whole is encoded
    at once and the continuation's tokens are those past the context's own encoding. Trailing whitespace of
    the context moves to the continuation first, as the harness's _encode_pair does."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = enc.encode_ordinary(context + continuation)
    return whole, len(whole) - len(enc.encode_ordinary(context))


def predictions(logliks: list[float], endings: list[str]) -> tuple[int, int]:
    """(acc's choice: largest log-likelihood sum, acc_norm's: largest sum per character of the ending)."""
    by_sum = max(range(len(logliks)), key=lambda i: logliks[i])
    by_char = max(range(len(logliks)), key=lambda i: logliks[i] / max(1, len(endings[i])))
    return by_sum, by_char


@torch.no_grad()
def continuation_logliks(model: GPT, sequences: list[tuple[list[int], int]], n_vocab: int, device: str,
                         amp) -> list[float]:
    """Sum of each continuation's token log-probabilities, for (tokens, continuation length) pairs,
    in one right-padded batch."""
    block = model.config.block_size
    rows = [tokens[-(block + 1):] for tokens, _ in sequences]  # cut the context from the left to fit
    width = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r) - 1] = torch.tensor(r[:-1])
    with amp:
        logits, _ = model(x.to(device))  # (B, width, vocab)
    # the tokenizer's tokens only: padding rows of the embedding are no tokens (the HF export drops them)
    logprobs = logits[..., :n_vocab].float().log_softmax(-1)  # (B, width, n_vocab), on the device
    sums = []
    for i, (r, (_, n_cont)) in enumerate(zip(rows, sequences)):
        if n_cont >= len(r):
            raise EvalError(f"an ending of {n_cont} tokens does not fit the model's block_size={block}")
        positions = torch.arange(len(r) - 1 - n_cont, len(r) - 1, device=device)  # logits at p predict token p + 1
        targets = torch.tensor(r[len(r) - n_cont:], device=device)
        sums.append(logprobs[i, positions, targets].sum())
    return torch.stack(sums).tolist()  # the continuations' sums gathered on the device: one small copy per batch


def score(model: GPT, enc, docs: list[dict], device: str, amp, batch_size: int = 8,
          progress: bool = False) -> dict:
    """acc and acc_norm over docs, with each item's log-likelihoods and choices."""
    from tqdm import tqdm
    n_vocab = enc.n_vocab
    results, right, right_norm = [], 0, 0
    bar = tqdm(total=len(docs), unit="item", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(docs), batch_size):
        items = [render(d) for d in docs[start:start + batch_size]]
        sequences = [encode(enc, ctx, " " + ending) for ctx, endings, _ in items for ending in endings]
        logliks = continuation_logliks(model, sequences, n_vocab, device, amp)
        for j, (_, endings, gold) in enumerate(items):
            ll = logliks[4 * j:4 * j + 4]
            pred, pred_norm = predictions(ll, endings)
            right, right_norm = right + (pred == gold), right_norm + (pred_norm == gold)
            results.append({"logliks": ll, "pred": pred, "pred_norm": pred_norm, "gold": gold})
        bar.update(len(items))
        bar.set_postfix_str(f"acc {right / len(results):.4f} acc_norm {right_norm / len(results):.4f}", refresh=False)
    bar.close()
    return {"items": len(results), "acc": right / len(results), "acc_norm": right_norm / len(results),
            "results": results}


# ------------------------------------------------------------------ data and model

def check_item(doc: dict, where: str) -> dict:
    """doc, if it holds what render() reads; else an error of two short lines naming what is missing."""
    problems = [f"no {f!r}" for f in ("activity_label", "endings", "label") if f not in doc]
    if "ctx" not in doc and not ("ctx_a" in doc and "ctx_b" in doc):
        problems.insert(1, "no 'ctx' (nor 'ctx_a' and 'ctx_b')")
    if "label" not in doc and doc.get("split") == "test":
        problems = ["the test split has no labels: score the validation split"]
    if not problems:
        if not (isinstance(doc["endings"], list) and len(doc["endings"]) == 4
                and all(isinstance(e, str) for e in doc["endings"])):
            problems.append("'endings' is not a list of 4 strings")
        if str(doc["label"]) not in ("0", "1", "2", "3"):
            problems.append(f"'label' is {doc['label']!r}, not 0-3")
    if problems:
        raise EvalError(f"{where}: not a HellaSwag item ({', '.join(problems)})\neach line needs {ITEM_FIELDS}")
    return doc


def read_items(path: str) -> list[dict]:
    """HellaSwag items from a JSON lines file, each checked (a wrong file is named with its line)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"cannot read --data_file={path} ({type(e).__name__}: {e})") from None
    docs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise EvalError(f"{path}:{n}: not a JSON line ({e}); each line needs {ITEM_FIELDS}") from None
        docs.append(check_item(doc if isinstance(doc, dict) else {}, f"{path}:{n}"))
    if not docs:
        raise EvalError(f"{path} holds no items")
    return docs


def load_items(cfg: EvalConfig) -> list[dict]:
    if cfg.data_file:
        docs = read_items(cfg.data_file)
    else:
        import datasets
        try:
            docs = list(datasets.load_dataset(HELLASWAG_HUB_ID, split="validation"))
        except Exception as e:  # no connection, hub errors: all say the same thing to the user
            first = (str(e).strip().splitlines() or [""])[0][:150]
            raise EvalError(f"could not load {HELLASWAG_HUB_ID} through datasets ({type(e).__name__}: {first})\n"
                            f"{OFFLINE_HINT}") from None
        docs = [check_item(d, f"{HELLASWAG_HUB_ID} item {i}") for i, d in enumerate(docs)]
    return docs[:cfg.limit] if cfg.limit else docs


def evaluate(cfg: EvalConfig) -> dict:
    check_values(cfg)
    device, device_reason = hardware.pick_device(cfg.device)
    hardware.print_warning(device_reason)
    dtype, dtype_reason = hardware.pick_dtype(cfg.dtype, device)
    loaded = load_for_inference(cfg.out_dir, cfg.ckpt, cfg.init_from)
    model = loaded.model.to(device)
    enc = tokenizer.load_encoding(loaded.tokenizer["name"])
    docs = load_items(cfg)
    subset = "" if len(docs) == HELLASWAG_ITEMS else f" (not the full {HELLASWAG_ITEMS:,}: not comparable)"
    print(f"hellaswag: {len(docs):,} items{subset}, zero-shot")
    print(report.device_line(device, hardware.device_name(device), device_reason, dtype,
                             report.choice_reason(dtype_reason, cfg.dtype == EvalConfig.dtype)))
    out = score(model, enc, docs, device, hardware.autocast(device, dtype), cfg.batch_size, cfg.progress)
    print(f"hellaswag: {out['items']:,} items | acc {out['acc']:.4f} | acc_norm {out['acc_norm']:.4f} "
          f"(sum of ending log-probs per character of the ending)")
    print("for reference, on all 10,042 validation items:\n  " + "\n  ".join(REFERENCES))
    return out


def main(argv: list[str] | None = None) -> None:
    run_main(EvalConfig, "eval.py", evaluate, argv)


if __name__ == "__main__":
    main()
