"""TensorBatch: named tensors that share a leading batch dimension, plus ragged-sequence helpers.

A batch is what moves between role groups over a :class:`rlinf.dist.channel.Channel`: every
tensor has the same size along dim 0, and a small JSON-able ``meta`` dict travels with it (for
example the policy version that produced the samples). Variable-length sequences travel padded,
with their lengths as another tensor of the batch (:func:`pad_sequences` / :func:`unpad`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor


def balanced_sizes(total: int, parts: int) -> list[int]:
    """Split ``total`` rows into ``parts`` sizes differing by at most one, larger ones first.

    Deterministic, so that a sender and its receivers agree without talking:
    ``balanced_sizes(10, 3) == [4, 3, 3]``.
    """
    assert parts > 0 and total >= 0, (total, parts)
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class TensorBatch(MutableMapping[str, Tensor]):
    """Mapping ``name -> Tensor`` whose tensors all share ``batch_size`` rows along dim 0.

    ``meta`` is a small JSON-able dict (checked on assignment of the batch to a channel).
    Splitting returns views (no copy); ``cat`` copies. Indexing with a string returns a
    tensor; indexing with a slice, an index list or a tensor of indices returns a sub-batch.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._tensors: dict[str, Tensor] = {}
        self.meta: dict[str, Any] = dict(meta or {})
        for name, t in (tensors or {}).items():
            self[name] = t

    # -- mapping protocol ---------------------------------------------------------------
    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self._tensors[key]
        if isinstance(key, int):  # one row, keeping the batch dimension
            key = slice(key, key + 1 or None)
        return TensorBatch({n: t[key] for n, t in self._tensors.items()}, self.meta)

    def __setitem__(self, name: str, tensor: Tensor) -> None:
        if not isinstance(name, str):
            raise TypeError(f"TensorBatch keys are strings, got {type(name).__name__}")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"TensorBatch[{name!r}] must be a torch.Tensor, got {type(tensor)}")
        if tensor.dim() == 0:
            raise ValueError(f"TensorBatch[{name!r}] is a scalar; batch tensors need a dim 0")
        others = [(n, t) for n, t in self._tensors.items() if n != name]
        if others and tensor.shape[0] != others[0][1].shape[0]:
            n0, t0 = others[0]
            raise ValueError(
                f"TensorBatch[{name!r}] has {tensor.shape[0]} rows but {n0!r} has "
                f"{t0.shape[0]}: all tensors of a batch share dim 0"
            )
        self._tensors[name] = tensor

    def __delitem__(self, name: str) -> None:
        del self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{n}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} {t.device}"
            for n, t in self._tensors.items()
        )
        return f"TensorBatch(batch_size={self.batch_size}, {{{fields}}}, meta={self.meta})"

    # -- batch operations ---------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Rows along dim 0 (0 for a batch without tensors)."""
        for t in self._tensors.values():
            return t.shape[0]
        return 0

    def split(self, sizes: Sequence[int]) -> list[TensorBatch]:
        """Split along dim 0 into parts of ``sizes`` rows (views, no copy); meta is shared."""
        if sum(sizes) != self.batch_size or any(s < 0 for s in sizes):
            raise ValueError(f"split sizes {list(sizes)} do not add up to {self.batch_size} rows")
        pieces = {n: torch.split(t, list(sizes), dim=0) for n, t in self._tensors.items()}
        return [
            TensorBatch({n: p[i] for n, p in pieces.items()}, self.meta) for i in range(len(sizes))
        ]

    def chunk(self, parts: int) -> list[TensorBatch]:
        """Split into ``parts`` balanced parts (sizes from :func:`balanced_sizes`)."""
        return self.split(balanced_sizes(self.batch_size, parts))

    @staticmethod
    def cat(batches: Sequence[TensorBatch]) -> TensorBatch:
        """Concatenate along dim 0 (one batch is returned as is); meta of the first batch.

        All batches must have the same names; trailing shapes and dtypes must agree.
        """
        if not batches:
            raise ValueError("TensorBatch.cat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        names = list(batches[0].keys())
        for i, b in enumerate(batches[1:], 1):
            if set(b.keys()) != set(names):
                raise ValueError(
                    f"TensorBatch.cat: batch {i} has names {sorted(b.keys())}, "
                    f"batch 0 has {sorted(names)}"
                )
        return TensorBatch(
            {n: torch.cat([b[n] for b in batches], dim=0) for n in names}, batches[0].meta
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TensorBatch:
        """Move every tensor to ``device`` (tensors already there are not copied)."""
        return TensorBatch(
            {n: t.to(device, non_blocking=non_blocking) for n, t in self._tensors.items()},
            self.meta,
        )

    def select(self, names: Iterable[str]) -> TensorBatch:
        """Sub-batch with only ``names`` (same tensors, no copy)."""
        names = list(names)
        missing = [n for n in names if n not in self._tensors]
        if missing:
            raise KeyError(f"TensorBatch has no {missing}; it has {list(self._tensors)}")
        return TensorBatch({n: self._tensors[n] for n in names}, self.meta)

    def nbytes(self) -> int:
        """Total bytes of the tensors."""
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def check_meta(self) -> None:
        """Raise ValueError if ``meta`` cannot be encoded as JSON (it must travel in a header)."""
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"TensorBatch.meta must be JSON-able (str/int/float/list/dict): {e}"
            ) from e


def pad_sequences(
    sequences: Sequence[Tensor], pad: float | int = 0, max_len: int | None = None
) -> tuple[Tensor, Tensor]:
    """Stack variable-length ``[L_i, *rest]`` tensors into ``padded [B, L_max, *rest]``.

    Returns ``(padded, lengths [B] int64)``; rows are right-padded with ``pad``. ``max_len``
    forces a longer padded length (never shorter than the longest sequence).
    """
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([s.shape[0] for s in sequences], dtype=torch.int64)
    longest = int(lengths.max())
    if max_len is not None and max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest sequence ({longest})")
    length = max_len if max_len is not None else longest
    first = sequences[0]
    padded = first.new_full((len(sequences), length, *first.shape[1:]), pad)
    for i, s in enumerate(sequences):
        padded[i, : s.shape[0]] = s
    return padded, lengths


def unpad(padded: Tensor, lengths: Tensor | Sequence[int]) -> list[Tensor]:
    """Inverse of :func:`pad_sequences`: row ``i`` cut to ``lengths[i]`` (views, no copy)."""
    lengths = lengths.tolist() if isinstance(lengths, Tensor) else list(lengths)
    if len(lengths) != padded.shape[0]:
        raise ValueError(f"{len(lengths)} lengths for a padded batch of {padded.shape[0]} rows")
    return [padded[i, :n] for i, n in enumerate(lengths)]
