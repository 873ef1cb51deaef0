"""bench/attention.py times every attention path and reports how much of the causal mask each allows (tiny shapes)."""
import pytest

from conftest import load_script


@pytest.mark.slow
def test_every_variant_is_timed_and_the_masks_allow_less_than_causal(capsys):
    bench = load_script("bench/attention.py")
    results = bench.main(["--block_size=64", "--windows=16", "--steps=1", "--warmup_steps=0", "--doc_len=16",
                          "--n_layer=2", "--n_head=2", "--n_embd=32"])
    assert set(results) == {"causal", "docs", "window 16", "docs+window 16"} and min(results.values()) > 0
    fractions = {line.split("|")[1].strip(): float(line.split("|")[4].strip(" %")) for line in
                 capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line}
    assert fractions["causal"] == 100.0 and fractions["docs+window 16"] < min(fractions["docs"], fractions["window 16"])
