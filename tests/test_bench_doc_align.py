"""bench/doc_align.py: what each doc_align mode keeps of the train split, counted exactly."""
import numpy as np

from conftest import load_script
from test_dataloader import make_doc_dir

bench = load_script("bench/doc_align.py")


def test_counts_discarded_tokens_and_cut_documents(tmp_path):
    d = make_doc_dir(tmp_path, longest=60)
    got = {r["doc_align"]: r for r in bench.main([f"--data_dir={d}", "--block_sizes=64"])}
    off, crop, fit = (got[m]["kept"] for m in ("off", "crop", "bestfit"))
    assert off.tokens == crop.tokens == fit.tokens and off.docs == crop.docs == fit.docs == 240
    assert off.discarded < 2 * 64  # windows lose at most the tail of each of the 2 shards
    assert 0 < fit.discarded < crop.discarded  # best fit wastes less than cropping every row
    assert off.cut > 0 and fit.cut <= got["bestfit"]["rows"]  # best fit cuts at most one document per row


def test_shard_kept_on_a_hand_made_shard():
    eot = 9
    shard = np.array([1, 2, eot, 3, 4, 5, eot, 6, eot, 7])  # documents [0,2) [2,6) [6,8) [8,10)
    kept = bench.shard_kept(shard, np.array([2, 6]), np.array([5, 8]), eot)  # rows hold [2,5) and [6,8)
    assert (kept.tokens, kept.discarded, kept.docs, kept.cut, kept.dropped) == (10, 5, 4, 1, 2)
