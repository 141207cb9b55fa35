"""Channel: send a TensorBatch from the ranks of one role to the ranks of another.

The peer mapping is static and computed identically on every rank from the two rank lists
(:func:`channel_pairs`), so no sizes are exchanged up front:

- ``len(src) >= len(dst)``: every source sends its whole batch to one destination; a
  destination merges its sources in the order of ``src_ranks`` (many-to-one, one-to-one);
- ``len(src) < len(dst)``: every destination receives from one source; a source splits its
  batch along dim 0 into balanced parts, one per destination, in the order of ``dst_ranks``.

A rank in both lists is always its own peer: its part is handed over locally, without
communication or copies (also when only some ranks are colocated). On the wire
(:func:`encode_batch`), a batch is a fixed-size header (the JSON spec of names, dtypes, shapes
and ``meta``, plus the small CPU tensors when they fit: a small CPU batch is one message), then
one message per device packing the other small tensors, then one message per large tensor. The
receiver needs no prior knowledge of the batch. CUDA tensors go over NCCL and CPU tensors over
gloo in the same group (``cpu:gloo,cuda:nccl``); the header travels on CPU whenever the group
has gloo.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rlinf.dist.batch import TensorBatch, balanced_sizes

logger = logging.getLogger(__name__)

ProcessGroup = Any  # torch.distributed.ProcessGroup (None means the default world group)


def channel_pairs(src_ranks: Sequence[int], dst_ranks: Sequence[int]) -> list[tuple[int, int]]:
    """Deterministic ``(src, dst)`` pairs of a channel; pure, identical on every rank.

    Each rank of the longer list gets exactly one peer; the ranks of the shorter list get
    balanced shares: the one with index ``j`` gets as many peers as there are ``i`` with
    ``i * len(short) // len(long) == j``. A rank in both lists is paired with itself; the other
    ranks of the longer list fill the remaining shares in list order, so without colocation
    ``src i -> dst i * len(dst) // len(src)`` (contiguous blocks). Swapping the two lists gives
    the same pairs swapped, which is what :meth:`Channel.reverse` relies on.
    """
    src, dst = list(src_ranks), list(dst_ranks)
    for label, ranks in (("src_ranks", src), ("dst_ranks", dst)):
        if not ranks:
            raise ValueError(f"channel {label} is empty")
        if len(set(ranks)) != len(ranks):
            raise ValueError(f"channel {label} has duplicate ranks: {ranks}")
    flip = len(src) < len(dst)
    many, few = (dst, src) if flip else (src, dst)
    capacity = [0] * len(few)
    for i in range(len(many)):
        capacity[i * len(few) // len(many)] += 1
    few_index = {r: j for j, r in enumerate(few)}
    owner: list[int | None] = [None] * len(many)
    for i, r in enumerate(many):  # colocated ranks talk to themselves
        j = few_index.get(r)
        if j is not None:
            owner[i] = j
            capacity[j] -= 1
    j = 0
    for i in range(len(many)):
        if owner[i] is None:
            while capacity[j] == 0:
                j += 1
            owner[i] = j
            capacity[j] -= 1
    pairs = [(many[i], few[owner[i]]) for i in range(len(many))]
    return [(b, a) for a, b in pairs] if flip else pairs


class SendHandle:
    """Pending sends to one peer; ``wait()`` before touching the sent tensors again.

    Holds references to the sent tensors (and the header) until completed. On CUDA,
    ``wait()`` makes the current stream wait for the transfer (it does not block the host).
    """

    def __init__(self, peer: int, works: list[Any], keep_alive: list[Tensor]) -> None:
        self.peer = peer
        self._works = works
        self._keep_alive = keep_alive

    def wait(self) -> None:
        for w in self._works:
            w.wait()
        self._works, self._keep_alive = [], []

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self._works)


def wait_all(handles: Sequence[SendHandle] | None) -> None:
    """Wait for every handle returned by an asynchronous send (None is accepted)."""
    for h in handles or ():
        h.wait()


def _header_device(group: ProcessGroup) -> torch.device:
    """CPU when the group can move CPU tensors (gloo/mpi), else the current CUDA device."""
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _recv_device(device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    assert isinstance(dtype, torch.dtype), f"unknown dtype {name!r} in a channel header"
    return dtype


_HEADER_BYTES = 16 * 1024  # the fixed first message of every batch
_PACK_LIMIT = 64 * 1024  # tensors up to this size travel packed, one message per device
_ALIGN = 16


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def encode_batch(batch: TensorBatch, header_device: torch.device) -> list[Tensor]:
    """The messages of one batch, in sending order.

    1. a fixed ``_HEADER_BYTES`` buffer on ``header_device``: an int64 spec length, the JSON
       spec (meta and ``[name, dtype, shape, device type, slot]`` rows, pack sizes) and, when
       it fits, the pack of the header's device type inline (a small batch is one message);
    2. the rest of the spec, only if it did not fit;
    3. the packs not inlined, one per device type: tensors of at most 64 KiB copied together
       (``slot`` is the byte offset in the pack; -1: a message of its own; -2: empty);
    4. every large tensor in batch order (no copy for contiguous tensors).
    """
    batch.check_meta()
    rows, members, large = [], {}, []
    for name, t in batch.items():
        nbytes = t.numel() * t.element_size()
        slot = -2 if nbytes == 0 else -1
        if 0 < nbytes <= _PACK_LIMIT:
            group = members.setdefault(t.device.type, [])
            slot = _align(group[-1][0] + group[-1][1].numel()) if group else 0
            group.append((slot, t.reshape(-1).view(torch.uint8)))
        elif nbytes:
            large.append(t.contiguous())  # a no-op for row splits of contiguous tensors
        rows.append([name, _dtype_name(t.dtype), list(t.shape), t.device.type, slot])
    sizes = {d: g[-1][0] + g[-1][1].numel() for d, g in members.items()}
    spec = {"meta": batch.meta, "tensors": rows, "packs": [[d, n] for d, n in sizes.items()]}
    raw = json.dumps(spec | {"inline": True}, separators=(",", ":")).encode()
    inline_at = _align(8 + len(raw))
    here = header_device.type  # the pack of this device type can ride in the header
    inline = here in sizes and inline_at + sizes[here] <= _HEADER_BYTES
    if not inline:
        raw = json.dumps(spec | {"inline": False}, separators=(",", ":")).encode()
    first = torch.zeros(_HEADER_BYTES, dtype=torch.uint8)
    first[:8] = torch.tensor([len(raw)], dtype=torch.int64).view(torch.uint8)
    head = raw[: _HEADER_BYTES - 8]
    first[8 : 8 + len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
    first = first.to(header_device)
    messages = []
    for device_type, group in members.items():
        if device_type == here and inline:
            buf = first[inline_at : inline_at + sizes[device_type]]
        else:  # on the device of the pack's first tensor
            buf = torch.empty(sizes[device_type], dtype=torch.uint8, device=group[0][1].device)
            messages.append(buf)
        for offset, data in group:
            buf[offset : offset + data.numel()].copy_(data)
    out = [first]
    if len(raw) > len(head):
        out.append(torch.frombuffer(bytearray(raw[len(head) :]), dtype=torch.uint8))
        out[-1] = out[-1].to(header_device)
    return out + messages + large


def spec_length(first: Tensor) -> tuple[int, bytes]:
    """``(spec length, spec bytes present in the first message)`` of a received header."""
    raw = first.cpu().numpy().tobytes()
    size = int.from_bytes(raw[:8], "little")
    return size, raw[8 : 8 + size]


def decode_batch(first: Tensor, raw: bytes) -> tuple[TensorBatch, list[Tensor]]:
    """Inverse of :func:`encode_batch`: ``(batch, buffers to receive the remaining messages
    into, in order)``; small tensors are views into their pack."""
    spec = json.loads(raw.decode())
    packs, to_recv = {}, []
    for dev, size in spec["packs"]:
        if dev == first.device.type and spec["inline"]:
            start = _align(8 + len(raw))
            packs[dev] = first[start : start + size]
        else:
            packs[dev] = torch.empty(size, dtype=torch.uint8, device=_recv_device(dev))
            to_recv.append(packs[dev])
    tensors = {}
    for name, dtype_name, shape, dev, slot in spec["tensors"]:
        dtype = _parse_dtype(dtype_name)
        if slot >= 0:
            nbytes = math.prod(shape) * _itemsize(dtype)
            t = packs[dev][slot : slot + nbytes].view(dtype).view(shape)
        else:
            t = torch.empty(shape, dtype=dtype, device=_recv_device(dev))
            if slot == -1:
                to_recv.append(t)
        tensors[name] = t
    return TensorBatch(tensors, spec["meta"]), to_recv


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class Channel:
    """Moves TensorBatches from ``src_ranks`` to ``dst_ranks`` (global ranks) over ``group``.

    ``group`` must contain every rank of both lists (None: the default world group). Every
    rank may build the channel; only the ranks in it may call its methods. On a colocated rank
    (in both lists) call ``send`` before ``recv``: the local part is queued in between.
    ``header_device``: where headers travel, "cpu" (gloo; the default when the group has gloo)
    or "cuda" (NCCL: lower latency for small GPU batches, which then travel as one message).
    It must be the same on every rank of the channel.
    """

    def __init__(
        self,
        src_ranks: Sequence[int],
        dst_ranks: Sequence[int],
        group: ProcessGroup = None,
        header_device: str | None = None,
    ) -> None:
        self.src_ranks = list(src_ranks)
        self.dst_ranks = list(dst_ranks)
        self.group = group
        self._header_device_type = header_device
        self.pairs = channel_pairs(self.src_ranks, self.dst_ranks)
        self.rank = dist.get_rank()
        if group is not None and self.rank in self.src_ranks + self.dst_ranks:
            members = set(dist.get_process_group_ranks(group))
            outside = sorted(set(self.src_ranks + self.dst_ranks) - members)
            if outside:
                raise ValueError(f"channel ranks {outside} are not in the channel's group")
        src_pos = {r: i for i, r in enumerate(self.src_ranks)}
        dst_pos = {r: i for i, r in enumerate(self.dst_ranks)}
        self.out_peers = sorted((d for s, d in self.pairs if s == self.rank), key=dst_pos.get)
        self.in_peers = sorted((s for s, d in self.pairs if d == self.rank), key=src_pos.get)
        self._local: deque[TensorBatch] = deque()

    def __repr__(self) -> str:
        return f"Channel({self.src_ranks} -> {self.dst_ranks}, rank {self.rank})"

    @property
    def is_src(self) -> bool:
        return bool(self.out_peers)

    @property
    def is_dst(self) -> bool:
        return bool(self.in_peers)

    def reverse(self) -> Channel:
        """The channel ``dst -> src`` with the same pairs (replies go back to their origin)."""
        rev = Channel(self.dst_ranks, self.src_ranks, self.group, self._header_device_type)
        assert sorted((d, s) for s, d in self.pairs) == sorted(rev.pairs), "pairs not symmetric"
        return rev

    def _header_device(self) -> torch.device:
        if self._header_device_type is None:
            self._header_device_type = _header_device(self.group).type
        return _recv_device(self._header_device_type)

    # -- sending -------------------------------------------------------------------------
    def split_sizes(self, batch_size: int) -> list[int]:
        """How many rows of a ``batch_size`` batch go to each of ``out_peers`` (in order)."""
        return balanced_sizes(batch_size, len(self.out_peers))

    def send(self, batch: TensorBatch, async_op: bool = False) -> list[SendHandle] | None:
        """Send ``batch`` (split balanced among this rank's destinations).

        Returns one handle per remote peer when ``async_op`` (wait on them before changing the
        tensors), else waits and returns None.
        """
        if not self.is_src:
            raise ValueError(f"rank {self.rank} is not a source of {self}")
        parts = [batch]
        if len(self.out_peers) > 1:
            parts = batch.split(self.split_sizes(batch.batch_size))
        return self.send_parts(parts, async_op=async_op)

    def send_parts(
        self, parts: Sequence[TensorBatch], async_op: bool = False
    ) -> list[SendHandle] | None:
        """Send ``parts[k]`` to ``out_peers[k]`` (e.g. one reply per peer of ``recv_parts``)."""
        if not self.is_src:
            raise ValueError(f"rank {self.rank} is not a source of {self}")
        if len(parts) != len(self.out_peers):
            raise ValueError(
                f"send_parts got {len(parts)} parts but rank {self.rank} has "
                f"{len(self.out_peers)} destinations {self.out_peers} in {self}"
            )
        handles = []
        for peer, part in zip(self.out_peers, parts):
            if peer == self.rank:
                self._local.append(part)
            else:
                handles.append(self._isend(part, peer))
        if async_op:
            return handles
        wait_all(handles)
        return None

    def _isend(self, batch: TensorBatch, peer: int) -> SendHandle:
        messages = encode_batch(batch, self._header_device())
        works = [dist.isend(t, dst=peer, group=self.group) for t in messages]
        return SendHandle(peer, works, messages)

    # -- receiving -----------------------------------------------------------------------
    def recv_parts(self) -> list[TensorBatch]:
        """One batch per source peer, in the order of ``in_peers`` (blocking)."""
        if not self.is_dst:
            raise ValueError(f"rank {self.rank} is not a destination of {self}")
        remote = [p for p in self.in_peers if p != self.rank]
        dev = self._header_device()
        first = {p: torch.empty(_HEADER_BYTES, dtype=torch.uint8, device=dev) for p in remote}
        for w in [dist.irecv(first[p], src=p, group=self.group) for p in remote]:
            w.wait()
        specs, rest = {}, {}
        for p in remote:
            size, specs[p] = spec_length(first[p])
            if size > len(specs[p]):
                rest[p] = torch.empty(size - len(specs[p]), dtype=torch.uint8, device=dev)
        for w in [dist.irecv(rest[p], src=p, group=self.group) for p in rest]:
            w.wait()
        batches: dict[int, TensorBatch] = {}
        works = []
        for p in remote:
            raw = specs[p] + (rest[p].cpu().numpy().tobytes() if p in rest else b"")
            batches[p], buffers = decode_batch(first[p], raw)
            works += [dist.irecv(t, src=p, group=self.group) for t in buffers]
        for w in works:
            w.wait()
        if self.rank in self.in_peers:
            if not self._local:
                raise RuntimeError(
                    f"rank {self.rank} is colocated in {self}: call send() before recv()"
                )
            batches[self.rank] = self._local.popleft()
        return [batches[p] for p in self.in_peers]

    def recv(self) -> TensorBatch:
        """The batch for this rank: its sources' parts concatenated in ``src_ranks`` order.

        With a single source (always the case for one-to-one, one-to-many and colocated
        one-to-one) the received batch is returned as is, without a copy.
        """
        return TensorBatch.cat(self.recv_parts())
