"""Shard headers and the loaders: validation, determinism, rank disjointness, resumable position."""
import os

import numpy as np
import pytest

from fineweb_gpt.dataloader import (HEADER_BYTES, ShardError, TrainLoader, ValSet, best_fit_rows, find_shards,
                                    header_for, open_shard, read_header)


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


EOT = 50256


def make_doc_dir(tmp_path, n_train=2, docs=120, seed=0, longest=99):
    """Shards in prepare.py's layout (each document followed by EOT), documents of 1 to `longest` tokens, each token
    id unique to its document (doc k uses ids k*100 + i), so a row piece names the document it came from."""
    rng = np.random.default_rng(seed)
    k = 0
    for name in [f"d_train_{i + 1:06d}.bin" for i in range(n_train)] + ["d_val_000000.bin"]:
        parts = []
        for _ in range(docs):
            parts += [k * 100 + np.arange(rng.integers(1, longest + 1)), [EOT]]
            k += 1
        write_shard(tmp_path / name, np.concatenate(parts))
    return str(tmp_path)


def epoch_rows(loader):
    """Every row of one epoch, as an array (rows, block_size + 1)."""
    rows = []
    for _ in range(loader.windows.total // loader.B):
        x, y, _ = loader.next_batch()
        rows.append(np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1))
    return np.concatenate(rows)


def doc_of(token: int) -> int:
    return token // 100


@pytest.mark.parametrize("mode", ["crop", "bestfit"])
def test_doc_aligned_rows_start_at_a_document_and_hold_its_text(tmp_path, mode):
    d = make_doc_dir(tmp_path)
    loader = TrainLoader(d, 4, 64, seed=1, doc_align=mode)
    rows = epoch_rows(loader)
    assert len(rows) >= 40 and (rows[:, 0] == EOT).all()  # never a row from mid-document
    for row in rows:
        for piece in np.split(row, np.flatnonzero(row == EOT)[1:]):  # each piece: EOT, then one document's start
            body = piece[1:]
            assert (np.diff(body) == 1).all() and len({doc_of(t) for t in body}) <= 1
            if len(body):
                assert body[0] % 100 == 0  # the document's first token: nothing skipped after the EOT
    assert len({tuple(r) for r in rows.tolist()}) == len(rows)  # each row once per epoch


def test_bestfit_rows_hold_whole_documents_but_the_one_cropped_at_the_end(tmp_path):
    d = make_doc_dir(tmp_path, longest=60)
    shards = [open_shard(os.path.join(d, f"d_train_{i:06d}.bin")) for i in (1, 2)]
    length = {}  # document -> tokens after its EOT
    for shard in shards:
        s = np.asarray(shard)
        for t in s[s != EOT]:
            length[doc_of(int(t))] = length.get(doc_of(int(t)), 0) + 1

    def whole_documents(mode: str) -> int:
        rows, whole = epoch_rows(TrainLoader(d, 4, 128, seed=1, doc_align=mode)), 0
        for row in rows:
            pieces = np.split(row, np.flatnonzero(row == EOT)[1:])
            for i, piece in enumerate(pieces):
                body = piece[1:]
                complete = len(body) == (length[doc_of(int(body[0]))] if len(body) else 0)
                if i < len(pieces) - 1:
                    assert complete  # only a row's last piece may be cut
                whole += complete
        assert whole > 2 * len(rows)  # rows hold several whole documents
        return whole

    assert whole_documents("bestfit") > whole_documents("crop")  # choosing what fits keeps more documents whole


def test_best_fit_takes_the_longest_document_that_fits_and_crops_the_shortest_when_none_does():
    docs, taken, rows = best_fit_rows(np.array([5, 3, 2, 4, 9]), 7)
    assert rows == [0, 2, 4, 5]  # three rows of 7 tokens
    assert docs == [0, 2, 3, 1, 4] and taken == [5, 2, 4, 3, 7]  # 5+2, 4+3, then 9 cropped to 7


def test_crop_rows_are_stretches_of_a_shard_from_a_document_start(tmp_path):
    d = make_doc_dir(tmp_path, n_train=1)
    shard = np.asarray(open_shard(os.path.join(d, "d_train_000001.bin")))
    loader = TrainLoader(d, 2, 64, seed=1, doc_align="crop")
    _, starts, ends = loader.windows.segments()
    assert (shard[starts] == EOT).all() and (ends - starts == 65).all()
    assert (starts[1:] >= starts[:-1] + 64).all()  # rows do not overlap but for the one shared boundary token
    skipped = starts[1:] - (starts[:-1] + 64)
    assert all((shard[a + 64:b] != EOT).all() for a, b in zip(starts[:-1], starts[1:]))  # a cut document's rest only
    assert skipped.sum() > 0


@pytest.mark.parametrize("mode", ["crop", "bestfit"])
def test_doc_aligned_resume_is_exact_and_ranks_disjoint(tmp_path, mode):
    d = make_doc_dir(tmp_path)
    a = TrainLoader(d, 4, 32, seed=5, doc_align=mode)
    for _ in range(a.windows.total // 4 - 2):  # the batches after the restore cross into the next epoch
        a.next_batch()
    b = TrainLoader(d, 4, 32, seed=5, doc_align=mode)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert np.array_equal(a.next_batch()[0], b.next_batch()[0])
    single = TrainLoader(d, 4, 32, seed=3, doc_align=mode)
    ranks = [TrainLoader(d, 4, 32, seed=3, rank=r, world_size=2, doc_align=mode) for r in range(2)]
    for _ in range(5):
        r0, r1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        assert not {tuple(r) for r in r0.tolist()} & {tuple(r) for r in r1.tolist()}
        assert np.array_equal(r0, single.next_batch()[0]) and np.array_equal(r1, single.next_batch()[0])


def test_doc_align_change_on_resume_is_refused_and_old_states_read_as_windows(tmp_path):
    d = make_doc_dir(tmp_path)
    windows = TrainLoader(d, 4, 32, seed=5)
    old_state = {k: v for k, v in windows.state_dict().items() if k != "doc_align"}  # saved before doc_align
    windows.load_state_dict(old_state)
    with pytest.raises(ShardError, match="doc_align: 'off' -> 'bestfit'"):
        TrainLoader(d, 4, 32, seed=5, doc_align="bestfit").load_state_dict(old_state)


def test_doc_align_without_document_boundaries_is_explained(tmp_path):
    d = make_dir(tmp_path)  # random ids below 50257: a few EOTs at most
    with pytest.raises(ShardError, match="rows opening at a document .*eot_token is the shards' end-of-text"):
        TrainLoader(d, 4, 32, doc_align="crop", eot_token=7)
