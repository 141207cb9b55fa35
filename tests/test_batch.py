import pytest
import torch

from rlinf.dist.batch import TensorBatch, balanced_sizes, pad_sequences, unpad


def _batch(rows: int = 5) -> TensorBatch:
    return TensorBatch(
        {
            "obs": torch.arange(rows * 3, dtype=torch.float32).reshape(rows, 3),
            "done": torch.arange(rows) % 2 == 0,
        },
        meta={"version": 3},
    )


def test_balanced_sizes_larger_parts_first_and_sum():
    assert balanced_sizes(10, 3) == [4, 3, 3]
    assert balanced_sizes(2, 3) == [1, 1, 0]
    assert balanced_sizes(6, 2) == [3, 3]
    for total in range(12):
        for parts in range(1, 6):
            sizes = balanced_sizes(total, parts)
            assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


def test_batch_size_and_mismatched_rows_rejected():
    b = _batch()
    assert b.batch_size == 5 and len(b) == 2 and set(b) == {"obs", "done"}
    with pytest.raises(ValueError, match=r"\['bad'\] has 4 rows but 'obs' has 5"):
        b["bad"] = torch.zeros(4)
    with pytest.raises(ValueError, match="scalar"):
        b["s"] = torch.tensor(1.0)
    assert TensorBatch().batch_size == 0


def test_split_is_views_and_cat_restores():
    b = _batch(7)
    parts = b.split([3, 0, 4])
    assert [p.batch_size for p in parts] == [3, 0, 4]
    assert parts[2]["obs"].data_ptr() == b["obs"][3].data_ptr()  # a view, no copy
    assert parts[0].meta == {"version": 3}
    back = TensorBatch.cat(parts)
    assert torch.equal(back["obs"], b["obs"]) and torch.equal(back["done"], b["done"])
    assert TensorBatch.cat([b]) is b
    with pytest.raises(ValueError, match="do not add up"):
        b.split([3, 3])
    assert [p.batch_size for p in b.chunk(3)] == [3, 2, 2]


def test_cat_rejects_different_names():
    with pytest.raises(ValueError, match="names"):
        TensorBatch.cat([_batch(), _batch().select(["obs"])])


def test_getitem_select_to_and_meta():
    b = _batch()
    assert b[1:3].batch_size == 2 and torch.equal(b[-1]["obs"], b["obs"][4:])
    idx = torch.tensor([4, 0])
    assert torch.equal(b[idx]["obs"], b["obs"][[4, 0]])
    sel = b.select(["obs"])
    assert list(sel) == ["obs"] and sel["obs"] is b["obs"]
    with pytest.raises(KeyError, match="missing"):
        b.select(["missing"])
    moved = b.to("cpu")
    assert moved["obs"] is b["obs"]  # already there: no copy
    assert b.nbytes() == 5 * 3 * 4 + 5
    b.meta["bad"] = object()
    with pytest.raises(ValueError, match="JSON"):
        b.check_meta()


def test_pad_and_unpad_roundtrip():
    seqs = [torch.arange(n, dtype=torch.int64) + 10 * n for n in (3, 1, 4)]
    padded, lengths = pad_sequences(seqs, pad=-1)
    assert padded.shape == (3, 4) and lengths.tolist() == [3, 1, 4]
    assert padded[1].tolist() == [10, -1, -1, -1]
    for a, b in zip(unpad(padded, lengths), seqs):
        assert torch.equal(a, b)
    wide, _ = pad_sequences([torch.ones(2, 5)], max_len=6)
    assert wide.shape == (1, 6, 5) and wide[0, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="shorter"):
        pad_sequences(seqs, max_len=2)
    with pytest.raises(ValueError, match="lengths"):
        unpad(padded, [1, 2])
