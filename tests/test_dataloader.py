"""Shard headers and the loaders: validation, determinism, rank disjointness, resumable position."""
import os

import numpy as np
import pytest

from fineweb_gpt.dataloader import HEADER_BYTES, ShardError, TrainLoader, ValSet, find_shards, header_for, open_shard, read_header


def write_shard(path, tokens, dtype=np.uint16):
    with open(path, "wb") as f:
        f.write(header_for(np.dtype(dtype), len(tokens)).tobytes())
        f.write(np.asarray(tokens, dtype=dtype).tobytes())


def make_dir(tmp_path, n_train=2, tokens=5000):
    rng = np.random.default_rng(0)
    for i in range(n_train):
        write_shard(tmp_path / f"x_train_{i + 1:06d}.bin", rng.integers(0, 50257, tokens))
    write_shard(tmp_path / "x_val_000000.bin", rng.integers(0, 50257, tokens))
    return str(tmp_path)


def test_llmc_header_layout_and_uint32(tmp_path):
    write_shard(tmp_path / "a.bin", [1, 2, 3])
    raw = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=3)
    assert raw.tolist() == [20240520, 1, 3]  # llm.c / modded-nanogpt GPT-2 shards
    assert os.path.getsize(tmp_path / "a.bin") == HEADER_BYTES + 3 * 2
    write_shard(tmp_path / "b.bin", [70000, 5], dtype=np.uint32)
    assert read_header(str(tmp_path / "b.bin")) == (np.dtype(np.uint32), 2)
    assert open_shard(str(tmp_path / "b.bin")).tolist() == [70000, 5]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "header says 100 tokens .* truncated or corrupt"),
    (lambda p: p.write_bytes(b"\x00" * 12 + p.read_bytes()[12:]), "unknown shard header"),
    (lambda p: p.write_bytes(b"abc"), "too short for a shard header"),
])
def test_bad_headers_say_rerun_prepare(tmp_path, damage, message):
    path = tmp_path / "s.bin"
    write_shard(path, range(100))
    damage(path)
    with pytest.raises(ShardError, match=f"{message}.*re-run data/fineweb/prepare.py"):
        open_shard(str(path))


def test_missing_data_is_explained(tmp_path):
    with pytest.raises(ShardError, match="does not exist; run data/fineweb/prepare.py"):
        find_shards(str(tmp_path / "nope"), "train")
    with pytest.raises(ShardError, match="no train shards"):
        find_shards(str(tmp_path), "train")


def test_batches_are_deterministic_shifted_and_cover_an_epoch_without_repeats(tmp_path):
    d = make_dir(tmp_path, tokens=1025)  # 2 shards x 32 windows of 32+1 tokens
    a, b = TrainLoader(d, 4, 32, seed=1), TrainLoader(d, 4, 32, seed=1)
    assert a.windows.total == 64
    seen = []
    for _ in range(16):  # exactly one epoch
        (xa, ya, _), (xb, yb, _) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert np.array_equal(xa[:, 1:], ya[:, :-1])  # targets are the inputs shifted by one
        seen += [tuple(r) for r in xa.tolist()]
    assert len(set(seen)) == 64
    assert not np.array_equal(TrainLoader(d, 4, 32, seed=2).next_batch()[0], TrainLoader(d, 4, 32, seed=1).next_batch()[0])


def test_ranks_are_disjoint_and_together_equal_one_process(tmp_path):
    d = make_dir(tmp_path)
    single = TrainLoader(d, 4, 32, seed=3)
    ranks = [TrainLoader(d, 4, 32, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        r0, r1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        s0, s1 = single.next_batch()[0], single.next_batch()[0]
        assert np.array_equal(r0, s0) and np.array_equal(r1, s1)


def test_position_restores_exactly(tmp_path):
    d = make_dir(tmp_path)
    a = TrainLoader(d, 4, 32, seed=5)
    for _ in range(7):
        *_, after = a.next_batch()
    state = a.state_dict()
    assert after == state  # the state handed out with a batch is the state once it is consumed
    b = TrainLoader(d, 4, 32, seed=5)
    b.load_state_dict(state)
    for _ in range(5):
        assert np.array_equal(a.next_batch()[0], b.next_batch()[0])
    (tmp_path / "other").mkdir()
    smaller = TrainLoader(make_dir(tmp_path / "other", n_train=1), 4, 32, seed=5)
    with pytest.raises(ShardError, match=r"differ from the checkpoint's \(checkpoint -> now: windows: \d+ -> \d+\)"):
        smaller.load_state_dict(state)
    with pytest.raises(ShardError, match=r"\(checkpoint -> now: seed: 5 -> 6\)"):  # only what changed is named
        TrainLoader(d, 4, 32, seed=6).load_state_dict(state)


def test_val_set_is_fixed_and_split_across_ranks(tmp_path):
    d = make_dir(tmp_path)
    v = ValSet(d, 4, 32, num_batches=5)
    once, twice = list(v.batches()), list(v.batches())
    assert all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(once, twice))
    assert np.array_equal(once[0][0][0], open_shard(os.path.join(d, "x_val_000000.bin"))[:32])  # the first val tokens
    split = list(v.batches(0, 2)) + list(v.batches(1, 2))
    assert len(split) == 5
    rows = lambda batches: sorted(tuple(r) for x, _ in batches for r in x.tolist())  # noqa: E731
    assert len(set(rows(v.batches(0, 2))) & set(rows(v.batches(1, 2)))) == 0  # the ranks are disjoint
    assert rows(split) == rows(once)  # and together they are the whole val set
    with pytest.raises(ShardError, match="lower eval_iters \\(at most 39\\)"):
        ValSet(d, 4, 32, num_batches=1000)


def test_block_size_larger_than_data_is_explained(tmp_path):
    d = make_dir(tmp_path, tokens=100)
    with pytest.raises(ShardError, match="fewer than one global micro-batch"):
        TrainLoader(d, 4, 64)


def test_a_shard_the_system_refuses_says_so_without_blaming_the_data(tmp_path):
    (tmp_path / "s.bin").mkdir()  # a folder where the shard should be: the system refuses to read it
    with pytest.raises(ShardError, match=r"cannot read shard .*s\.bin: Is a directory \(EISDIR\)") as e:
        open_shard(str(tmp_path / "s.bin"))
    assert "prepare.py" not in str(e.value)
