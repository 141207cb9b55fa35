"""Channel topologies on 4 gloo ranks: one spawn runs every case, the tests check its results."""

import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed

from rlinf.dist.batch import TensorBatch, pad_sequences, unpad
from rlinf.dist.channel import Channel, channel_pairs, decode_batch, encode_batch, spec_length


def _make(tag: int, rows: int) -> TensorBatch:
    """A batch every rank can rebuild: several dtypes, rows tagged by ``tag``."""
    base = torch.arange(rows, dtype=torch.float32) + 100 * tag
    return TensorBatch(
        {
            "obs": base[:, None, None] + torch.arange(6, dtype=torch.float32).reshape(1, 2, 3),
            "done": (torch.arange(rows) + tag) % 2 == 0,
            "ids": torch.arange(rows, dtype=torch.int64) * 7 + tag,
            "logp": (base / 3).to(torch.bfloat16),
        },
        meta={"tag": tag, "policy_version": 2},
    )


def _plain(batch: TensorBatch) -> dict:
    out = {
        n: t.float().tolist() if t.dtype == torch.bfloat16 else t.tolist() for n, t in batch.items()
    }
    return {"rows": batch.batch_size, "meta": batch.meta, "tensors": out}


def _cases(rank: int, world_size: int) -> dict:
    out: dict = {}
    sub = dist.new_group([0, 1])  # every rank creates every group, in the same order

    # one-to-one over a subgroup
    ch = Channel([0], [1], group=sub)
    if rank == 0:
        ch.send(_make(0, 5))
    if rank == 1:
        out["one_to_one"] = _plain(ch.recv())

    # a spec over 1 KiB (many names, long meta) and a large tensor beside packed small ones
    ch = Channel([0], [1])
    wide = TensorBatch({f"f{i}": torch.full((2, i + 1), float(i)) for i in range(60)})
    wide["big"] = torch.arange(2 * 20_000, dtype=torch.float64).reshape(2, 20_000)
    wide.meta = {"note": "x" * 3000}
    if rank == 0:
        ch.send(wide)
    if rank == 1:
        got = ch.recv()
        out["wide_ok"] = list(got) == list(wide) and got.meta == wide.meta
        out["wide_ok"] &= all(torch.equal(got[n], wide[n]) for n in wide)

    # many-to-one, uneven source sizes, merged in src order (not arrival order)
    ch = Channel([0, 1, 2], [3])
    if rank in (0, 1, 2):
        ch.send(_make(rank, [2, 3, 1][rank]))
    if rank == 3:
        parts = ch.recv_parts()
        out["parts_rows"] = [p.batch_size for p in parts]
        out["many_to_one"] = _plain(TensorBatch.cat(parts))

    # one-to-many, 10 rows balanced over 3 destinations; and 2 rows over 3 (an empty part)
    ch = Channel([0], [1, 2, 3])
    if rank == 0:
        ch.send(_make(0, 10))
        ch.send(_make(1, 2))
    if rank in (1, 2, 3):
        out["one_to_many"] = _plain(ch.recv())
        empty = ch.recv()
        out["one_to_many_small"] = {n: list(t.shape) for n, t in empty.items()}

    # ragged sequences: padded + lengths, two messages with different padded lengths
    ch = Channel([1], [0])
    seqs = [[torch.arange(n) + 10 * n for n in lens] for lens in ([3, 1, 4], [7, 2])]
    if rank == 1:
        for s in seqs:
            padded, lengths = pad_sequences(s, pad=-1)
            ch.send(TensorBatch({"tokens": padded, "lengths": lengths}))
    if rank == 0:
        got = [ch.recv() for _ in seqs]
        out["ragged_shapes"] = [list(b["tokens"].shape) for b in got]
        out["ragged_ok"] = all(
            torch.equal(a, b)
            for batch, s in zip(got, seqs)
            for a, b in zip(unpad(batch["tokens"], batch["lengths"]), s)
        )

    # non-blocking: two sends in flight while the sender works, received in order
    ch = Channel([2], [3])
    if rank == 2:
        handles = ch.send(_make(5, 4), async_op=True) + ch.send(_make(6, 3), async_op=True)
        busy = sum(torch.ones(200, 200).sum().item() for _ in range(5))  # overlapped work
        for h in handles:
            h.wait()
        out["async_handles"] = [len(handles), busy > 0, all(h.is_completed() for h in handles)]
    if rank == 3:
        out["async"] = [_plain(ch.recv()), _plain(ch.recv())]

    # reverse: env ranks send observations, the rollout rank replies to each its own actions
    obs = Channel([0, 1, 2], [3])
    act = obs.reverse()
    if rank in (0, 1, 2):
        obs.send(_make(rank, rank + 1))
        out["reply"] = _plain(act.recv())
    if rank == 3:
        parts = obs.recv_parts()
        act.send_parts(
            [TensorBatch({"action": p["ids"] * 2}, {"to": p.meta["tag"]}) for p in parts]
        )

    # mixed colocation 4 -> 2: ranks 1 and 2 keep their own batch (no copy), 0 and 3 send
    ch = Channel([0, 1, 2, 3], [1, 2])
    mine = _make(rank, 2)
    ch.send(mine)
    if rank in (1, 2):
        parts = ch.recv_parts()
        out["mixed_peers"] = ch.in_peers
        out["mixed_local_is_same"] = any(p is mine for p in parts)
        out["mixed"] = _plain(TensorBatch.cat(parts))

    # fully colocated 1 -> 1: the very same object comes back, no communication
    ch = Channel([0, 1], [0, 1])
    if rank in (0, 1):
        try:
            ch.recv()
        except RuntimeError as e:
            out["recv_before_send"] = str(e)
        b = _make(rank, 3)
        ch.send(b)
        out["colocated_same"] = ch.recv() is b
        try:
            Channel([2], [3]).send(b)
        except ValueError as e:
            out["not_src"] = str(e)
    return out


@pytest.fixture(scope="module")
def results():
    return run_distributed(_cases, 4, timeout=90)


def _expect(tag: int, rows: int, start: int = 0, stop: int | None = None) -> dict:
    return _plain(_make(tag, rows)[start:stop])


def test_channel_pairs_balanced_deterministic_and_symmetric():
    assert channel_pairs([0, 1, 2, 3], [4, 5]) == [(0, 4), (1, 4), (2, 5), (3, 5)]
    assert channel_pairs([0, 1, 2], [3, 4]) == [(0, 3), (1, 3), (2, 4)]
    assert channel_pairs([0], [1, 2, 3]) == [(0, 1), (0, 2), (0, 3)]
    assert sorted(channel_pairs([0, 1, 2, 3], [1, 2])) == [(0, 1), (1, 1), (2, 2), (3, 2)]
    for src, dst in [([0, 1, 2, 3, 4], [3, 5]), ([0, 1], [1, 2, 3, 4, 5]), ([4, 0, 2], [2, 4, 0])]:
        pairs = channel_pairs(src, dst)
        back = channel_pairs(dst, src)
        assert sorted((d, s) for s, d in pairs) == sorted(back)
        for r in set(src) & set(dst):
            assert (r, r) in pairs  # a colocated rank is its own peer
    with pytest.raises(ValueError, match="duplicate"):
        channel_pairs([0, 0], [1])


def _roundtrip(batch: TensorBatch) -> tuple[TensorBatch, int]:
    """Encode, then receive the messages as a peer would (irecv fills the buffers in order)."""
    messages = encode_batch(batch, torch.device("cpu"))
    size, raw = spec_length(messages[0])
    used = 1
    if size > len(raw):
        raw += messages[1].numpy().tobytes()
        used = 2
    got, buffers = decode_batch(messages[0], raw)
    nbytes = [[t.numel() * t.element_size() for t in ts] for ts in (buffers, messages[used:])]
    assert nbytes[0] == nbytes[1]
    for buf, msg in zip(buffers, messages[used:]):
        buf.view(-1).view(torch.uint8).copy_(msg.reshape(-1).view(torch.uint8))
    return got, len(messages)


def test_wire_format_roundtrip():
    for pad in range(40):  # every alignment of the inlined small tensors
        batch = _make(1, 3)
        batch.meta["pad"] = "x" * pad
        got, messages = _roundtrip(batch)
        assert messages == 1  # a small CPU batch is a single message
        assert _plain(got) == _plain(batch)
    batch = _make(2, 4000)  # obs (96 KB) travels alone, the other tensors (44 KB) packed
    batch.meta["long"] = "y" * 20_000  # the spec overflows the fixed header
    got, messages = _roundtrip(batch)
    assert messages == 4  # header, rest of the spec, the pack, obs
    assert _plain(got) == _plain(batch)
    empty, messages = _roundtrip(_make(0, 0))
    assert messages == 1 and empty.batch_size == 0 and list(empty["obs"].shape) == [0, 2, 3]


def test_one_to_one_keeps_dtypes_shapes_and_meta(results):
    assert results[1]["one_to_one"] == _expect(0, 5)


def test_long_header_and_large_tensors(results):
    assert results[1]["wide_ok"] is True


def test_many_to_one_merges_in_rank_order(results):
    got = results[3]
    assert got["parts_rows"] == [2, 3, 1]
    parts = [_make(r, n) for r, n in enumerate([2, 3, 1])]
    assert got["many_to_one"] == _plain(TensorBatch.cat(parts))


def test_one_to_many_balanced_split(results):
    for rank, (start, stop) in zip((1, 2, 3), [(0, 4), (4, 7), (7, 10)]):
        assert results[rank]["one_to_many"] == _expect(0, 10, start, stop)
    assert results[3]["one_to_many_small"]["obs"] == [0, 2, 3]  # empty part keeps its shape
    assert results[1]["one_to_many_small"]["obs"] == [1, 2, 3]


def test_ragged_sequences(results):
    assert results[0]["ragged_shapes"] == [[3, 4], [2, 7]]
    assert results[0]["ragged_ok"]


def test_non_blocking_sends(results):
    assert results[2]["async_handles"] == [2, True, True]
    assert results[3]["async"] == [_expect(5, 4), _expect(6, 3)]


def test_reverse_replies_reach_their_origin(results):
    for rank in (0, 1, 2):
        reply = results[rank]["reply"]
        assert reply["meta"] == {"to": rank}
        assert reply["tensors"]["action"] == (_make(rank, rank + 1)["ids"] * 2).tolist()


def test_mixed_colocation_hands_over_locally(results):
    assert results[1]["mixed_peers"] == [0, 1] and results[2]["mixed_peers"] == [2, 3]
    assert results[1]["mixed_local_is_same"] and results[2]["mixed_local_is_same"]
    assert results[1]["mixed"] == _plain(TensorBatch.cat([_make(0, 2), _make(1, 2)]))
    assert results[2]["mixed"] == _plain(TensorBatch.cat([_make(2, 2), _make(3, 2)]))


def test_colocated_returns_same_object_and_clear_errors(results):
    for rank in (0, 1):
        assert results[rank]["colocated_same"] is True
        assert "call send() before recv()" in results[rank]["recv_before_send"]
        assert "not a source" in results[rank]["not_src"]
