"""Weight sync: actor parameters (FSDP2 DTensor shards or plain tensors) to the rollout engines.

One sync, on every actor and rollout rank (SPMD):

1. the actor ranks list their parameters (names, full shapes, target dtype) and cut them into
   buckets of about ``bucket_mb`` (:func:`plan_buckets`, a pure function, so every rank gets the
   same layout); a header with the policy ``version`` goes to the remote rollout ranks, with
   that list only when it changed since the last sync (plan and buffer views are reused);
2. bucket ``k`` is gathered on all actor ranks (FSDP2 shards: one coalesced all-gather per
   bucket over the actor mesh, shards cast to the rollout dtype *before* the gather), landing
   in (or copied into) one flat reusable buffer of its sender, ``senders[k % n]``, which
   broadcasts it asynchronously to the remote rollout ranks over its own group while the next
   bucket is gathered; different senders own different buckets, so several links carry data
   at once;
3. rollout ranks receive buckets into reusable flat buffers (a few in flight) and hand named
   views to the engine's ``load_weights(iterable of (name, tensor))``, which must copy them;
4. a rank that is both actor and rollout (colocated) loads each gathered bucket in place,
   without any broadcast: at most one bucket of extra memory (a parameter larger than
   ``bucket_mb`` is a bucket of its own), also when casting fp32 shards to bf16.

Errors of validation or loading are raised only after the transfer is over, so that no peer is
left waiting in a collective.

Groups: one per sender, ``sorted({sender} | remote rollout ranks)``
(:func:`weight_sync_group_specs`); the topology creates them on every rank in that order and
passes them in. Fully colocated placements need none.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LoadWeights = Callable[[Iterable[tuple[str, Tensor]]], None]
"""An engine's loader: copies each named tensor into its weights (tensors are borrowed)."""

Rename = Callable[[str], "str | tuple[str, Any]"]
"""Name hook: actor name -> engine name, or (engine name, index into it) for fused weights."""

_ALIGN = 64  # bytes; every tensor of a flat bucket starts at a multiple of this


@dataclass(frozen=True)
class WeightSpec:
    """One synced tensor: its name, the dtype it travels in and its full (unsharded) shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * _itemsize(self.dtype)


@dataclass(frozen=True)
class Bucket:
    """Specs laid out in one flat byte buffer at ``offsets`` (aligned), ``nbytes`` in total."""

    specs: tuple[WeightSpec, ...]
    offsets: tuple[int, ...]
    nbytes: int


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def plan_buckets(specs: Sequence[WeightSpec], bucket_bytes: int) -> list[Bucket]:
    """Cut ``specs`` (in order) into buckets of at most ``bucket_bytes``; pure and deterministic.

    A tensor larger than ``bucket_bytes`` gets a bucket of its own.
    """
    assert bucket_bytes > 0, bucket_bytes
    buckets: list[Bucket] = []
    cur: list[WeightSpec] = []
    offsets: list[int] = []
    end = 0
    for spec in specs:
        start = -(-end // _ALIGN) * _ALIGN
        if cur and start + spec.nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(cur), tuple(offsets), end))
            cur, offsets, start = [], [], 0
        cur.append(spec)
        offsets.append(start)
        end = start + spec.nbytes
    if cur:
        buckets.append(Bucket(tuple(cur), tuple(offsets), end))
    return buckets


def sender_ranks(actor_ranks: Sequence[int], num_senders: int | None = None) -> list[int]:
    """The actor ranks that broadcast buckets: ``num_senders`` of them, evenly spread
    (all by default). Spreading picks one rank per node when ``num_senders`` is the node count.
    """
    a = len(actor_ranks)
    n = a if num_senders is None else num_senders
    if n < 1:
        raise ValueError(f"weight_sync.num_senders must be >= 1, got {num_senders}")
    n = min(n, a)
    return [actor_ranks[i * a // n] for i in range(n)]


def weight_sync_group_specs(
    actor_ranks: Sequence[int], rollout_ranks: Sequence[int], num_senders: int | None = None
) -> list[list[int]]:
    """The process groups a :class:`WeightSync` needs, in creation order (every rank, SPMD).

    One group per sender: the sender plus every rollout rank that is not an actor rank.
    Empty when every rollout rank is also an actor rank (fully colocated).
    """
    if not actor_ranks or not rollout_ranks:
        raise ValueError("weight sync needs at least one actor rank and one rollout rank")
    actors = set(actor_ranks)
    remote = [r for r in rollout_ranks if r not in actors]
    if not remote:
        return []
    return [sorted({s, *remote}) for s in sender_ranks(actor_ranks, num_senders)]


def check_weight_specs(
    expected: Mapping[str, Sequence[int]], received: Iterable[WeightSpec]
) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped parameter."""
    received = list(received)
    got = {s.name: tuple(s.shape) for s in received}
    errors = []
    for name, shape in got.items():
        if name not in expected:
            errors.append(f"actor sends {name!r} {shape} but the rollout has no such weight")
        elif tuple(expected[name]) != shape:
            errors.append(
                f"parameter {name!r}: actor shape {shape}, rollout expects {tuple(expected[name])}"
            )
    errors += [
        f"rollout expects {n!r} {tuple(s)} but the actor does not send it"
        for n, s in expected.items()
        if n not in got
    ]
    if errors:
        raise ValueError("weight sync mismatch:\n  " + "\n  ".join(errors))


def named_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``name -> full shape`` of a module's parameters (the ``expected`` of a plain engine)."""
    return {n: tuple(p.shape) for n, p in module.named_parameters()}


def load_into_module(module: nn.Module, rename: Rename | None = None) -> LoadWeights:
    """A ``load_weights`` that copies named tensors into ``module``'s parameters/buffers in place.

    ``rename(name)`` maps an actor name to the module's name, or to ``(name, index)`` to fill a
    part of a fused weight, e.g. ``q_proj.weight -> ("qkv_proj.weight", slice(0, 64))``. An
    unknown name or a shape mismatch raises ValueError naming the parameter and both shapes.
    """
    targets = dict(module.named_parameters())
    targets.update(module.named_buffers())

    def load_weights(weights: Iterable[tuple[str, Tensor]]) -> None:
        with torch.no_grad():
            for name, tensor in weights:
                mapped = rename(name) if rename is not None else name
                target, index = mapped if isinstance(mapped, tuple) else (mapped, None)
                if target not in targets:
                    raise ValueError(
                        f"weight sync: received {name!r} but {type(module).__name__} has no "
                        f"weight {target!r} (fix the name mapping or the model)"
                    )
                dst = targets[target].data
                if index is not None:
                    dst = dst[index]
                if dst.shape != tensor.shape:
                    raise ValueError(
                        f"weight sync: parameter {name!r} has shape {tuple(tensor.shape)} on the "
                        f"actor but {target!r}{'' if index is None else f'[{index}]'} has shape "
                        f"{tuple(dst.shape)} on the rollout"
                    )
                dst.copy_(tensor)

    return load_weights


class _Deferred:
    """Keeps the first loading/validation error until the transfer is over, so that the other
    ranks of the sync never hang waiting for a rank that gave up half-way."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.error is None:
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - re-raised by raise_if_any
                self.error = e

    def raise_if_any(self) -> None:
        if self.error is not None:
            raise self.error


@functools.cache
def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        return None
    return DTensor


def _is_dtensor(t: Tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _dim0_shard(t: Tensor, meshes: dict[int, tuple[Any, int, int]]) -> tuple | None:
    """``(local shard, group, mesh size, coordinate)`` of a DTensor sharded on dim 0 over a 1-D
    mesh (FSDP2's layout), else None. ``meshes`` caches the per-mesh facts (slow to query)."""
    if not _is_dtensor(t) or t.dim() == 0 or t.numel() == 0:
        return None
    from torch.distributed.tensor import Shard

    mesh, placements = t.device_mesh, t.placements
    if mesh.ndim != 1 or len(placements) != 1 or type(placements[0]) is not Shard:
        return None
    if placements[0].dim != 0:
        return None
    info = meshes.get(id(mesh))
    if info is None:
        info = meshes[id(mesh)] = (mesh.get_group(), mesh.size(), mesh.get_local_rank())
    return (t.to_local(), *info)


@torch.no_grad()
def gather_bucket(
    sources: Sequence[Tensor],
    specs: Sequence[WeightSpec],
    dests: Sequence[Tensor] | None = None,
    meshes: dict | None = None,
) -> list[Tensor]:
    """Full tensors of one bucket; a collective over the actor ranks when any is a DTensor.

    Plain tensors are returned as they are (not cast). DTensors sharded on dim 0 of a 1-D mesh
    (FSDP2) are cast shard-wise to ``spec.dtype`` (into their own chunk of the output, so no
    memory beyond the outputs) and gathered by one coalesced all-gather for the whole bucket,
    straight into ``dests[i]`` where given and the rows divide evenly; other DTensors go
    through ``full_tensor()``. ``meshes``: a cache kept between calls.
    """
    meshes = {} if meshes is None else meshes
    fulls: list[Tensor] = []
    ops: list[tuple[Tensor, Tensor, Any]] = []  # (output, input, group)
    for i, (t, spec) in enumerate(zip(sources, specs)):
        shard = _dim0_shard(t, meshes)
        if shard is not None:
            local, group, world, coord = shard
            n0, rest = spec.shape[0], spec.shape[1:]
            rows = -(-n0 // world)  # torch.chunk sizes, as FSDP2 and distribute_tensor shard
            if local.shape[0] != max(0, min(rows, n0 - coord * rows)):
                shard = None  # another layout: let DTensor work it out
        if shard is None:
            fulls.append(t.to(spec.dtype).full_tensor() if _is_dtensor(t) else t.detach())
            continue
        if dests is not None and rows * world == n0:
            out = dests[i]
        else:
            out = torch.empty((rows * world, *rest), dtype=spec.dtype, device=local.device)
        if local.shape[0] == rows and local.dtype == spec.dtype and local.is_contiguous():
            inp = local
        else:  # cast (and pad) in place: this rank's chunk of the output is the input
            inp = out[coord * rows : (coord + 1) * rows]
            inp[: local.shape[0]].copy_(local)  # rows past n0 are never read
        ops.append((out, inp, group))
        fulls.append(out[:n0])
    _all_gather_many(ops)
    return fulls


def _copy_all(dsts: list[Tensor], srcs: list[Tensor]) -> None:
    """``dst.copy_(src)`` for every pair (casting), in few kernel launches where possible."""
    if not dsts:
        return
    foreach = getattr(torch, "_foreach_copy_", None)
    if (
        foreach is not None
        and len({(d.device, d.dtype, s.device, s.dtype) for d, s in zip(dsts, srcs)}) == 1
    ):
        foreach(dsts, srcs)
        return
    for d, s in zip(dsts, srcs):
        d.copy_(s)


def _all_gather_many(ops: list[tuple[Tensor, Tensor, Any]]) -> None:
    """All-gathers into ``output`` tensors: one coalesced launch when they share a group."""
    if not ops:
        return
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    coalesce = getattr(dist, "_coalescing_manager", None)
    if coalesce is not None and len({id(g) for _, _, g in ops}) == 1:
        with coalesce(group=ops[0][2], async_ops=True) as cm:
            for out, inp, group in ops:
                gather(out, inp, group=group)
        cm.wait()
        return
    works = [gather(out, inp, group=group, async_op=True) for out, inp, group in ops]
    for w in works:
        w.wait()


def _view(buf: Tensor, offset: int, spec: WeightSpec) -> Tensor:
    return buf[offset : offset + spec.nbytes].view(spec.dtype).view(spec.shape)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _header_device(group: Any) -> torch.device:
    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _local_device(device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device_type)


@dataclass
class _Layout:
    """A sync's bucket plan, kept between syncs together with views into the flat buffers."""

    specs: tuple[WeightSpec, ...]
    buckets: list[Bucket]
    device: torch.device  # of the flat buffers
    max_bytes: int
    views: dict[tuple[int, int], list[Tensor]] = field(default_factory=dict)  # (slot, bucket)


class WeightSync:
    """Moves actor weights to rollout engines; build it on every rank with the same arguments.

    ``groups[i]`` is the group created for ``weight_sync_group_specs(...)[i]`` (any value on
    ranks outside it). Actor ranks call :meth:`sync`; rollout-only ranks call :meth:`receive`.
    ``dtype`` casts floating-point weights on the sender (e.g. fp32 master -> bf16 rollout).
    ``inflight`` flat buffers of one bucket each are kept per sending or receiving rank. The
    bucket plan is kept between syncs: while names, shapes and dtypes stay the same, the
    header is two integers (version, 0) and no plan is rebuilt.
    """

    def __init__(
        self,
        actor_ranks: Sequence[int],
        rollout_ranks: Sequence[int],
        groups: Sequence[Any],
        bucket_mb: float = 512.0,
        dtype: torch.dtype | None = None,
        num_senders: int | None = None,
        inflight: int = 2,
    ) -> None:
        specs = weight_sync_group_specs(actor_ranks, rollout_ranks, num_senders)
        if len(groups) != len(specs):
            raise ValueError(
                f"WeightSync got {len(groups)} groups but needs {len(specs)}: {specs} "
                "(create them with weight_sync_group_specs on every rank)"
            )
        if bucket_mb <= 0:
            raise ValueError(f"weight_sync.bucket_mb must be > 0, got {bucket_mb}")
        if inflight < 1:
            raise ValueError(f"weight_sync.inflight must be >= 1, got {inflight}")
        self.actor_ranks = list(actor_ranks)
        self.rollout_ranks = list(rollout_ranks)
        self.remote_rollouts = [r for r in rollout_ranks if r not in set(actor_ranks)]
        self.senders = sender_ranks(actor_ranks, num_senders) if specs else []
        self.groups = list(groups)
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.dtype = dtype
        self.inflight = inflight
        self.rank = dist.get_rank()
        self.is_actor = self.rank in self.actor_ranks
        self.is_rollout = self.rank in self.rollout_ranks
        self.version: int | None = None
        self._layout: _Layout | None = None
        self._buffers: list[Tensor | None] = [None] * inflight
        self._meshes: dict[int, tuple[Any, int, int]] = {}

    @property
    def last_buckets(self) -> list[Bucket]:
        """The bucket plan of the last sync (empty before the first)."""
        return self._layout.buckets if self._layout is not None else []

    # -- shared ---------------------------------------------------------------------------
    def _set_layout(self, specs: tuple[WeightSpec, ...], bucket_bytes: int, device) -> _Layout:
        layout = self._layout
        if layout is None or layout.specs != specs or layout.device != device:
            buckets = plan_buckets(specs, bucket_bytes)
            max_bytes = max((b.nbytes for b in buckets), default=0)
            layout = self._layout = _Layout(specs, buckets, device, max_bytes)
        return layout

    def _views(self, slot: int, k: int) -> tuple[Tensor, list[Tensor]]:
        """Slot ``slot``'s flat buffer and bucket ``k``'s named views into it (cached)."""
        layout = self._layout
        assert layout is not None
        buf = self._buffers[slot]
        if buf is None or buf.device != layout.device or buf.numel() < layout.max_bytes:
            self._buffers[slot] = None  # free the old one first
            buf = torch.empty(layout.max_bytes, dtype=torch.uint8, device=layout.device)
            self._buffers[slot] = buf
            for key in [key for key in layout.views if key[0] == slot]:
                del layout.views[key]
        views = layout.views.get((slot, k))
        if views is None:
            bucket = layout.buckets[k]
            views = [_view(buf, o, s) for s, o in zip(bucket.specs, bucket.offsets)]
            layout.views[(slot, k)] = views
        return buf, views

    def release_buffers(self) -> None:
        """Free the flat buffers (they are kept between syncs to avoid reallocation)."""
        self._buffers = [None] * self.inflight
        if self._layout is not None:
            self._layout.views.clear()

    def _sender_of(self, k: int) -> int:
        return k % len(self.senders)

    # -- actor side -------------------------------------------------------------------------
    @torch.no_grad()
    def sync(
        self,
        params: nn.Module | Iterable[tuple[str, Tensor]],
        version: int,
        load_weights: LoadWeights | None = None,
        expected: Mapping[str, Sequence[int]] | None = None,
    ) -> int:
        """Send the actor's weights (all actor ranks call it, same parameter order).

        ``params``: a module (its ``named_parameters()``) or ``(name, tensor)`` pairs; DTensors
        are gathered. On a rank that is also a rollout rank pass the engine's ``load_weights``
        (and optionally ``expected`` name -> shape): it is loaded in place. Returns ``version``.
        A loading or validation error is raised once the transfer is over, so peers never hang.
        """
        if not self.is_actor:
            raise ValueError(f"rank {self.rank} is not an actor rank; call receive() instead")
        if self.is_rollout and load_weights is None:
            raise ValueError(
                f"rank {self.rank} is both actor and rollout: pass load_weights to sync()"
            )
        named = list(params.named_parameters() if isinstance(params, nn.Module) else params)
        specs = tuple(WeightSpec(n, self._out_dtype(t), tuple(t.shape)) for n, t in named)
        deferred = _Deferred()
        if self.is_rollout and expected is not None:
            deferred(check_weight_specs, expected, specs)
        device = _tensor_device(named[0][1]) if named else torch.device("cpu")
        old = self._layout
        layout = self._set_layout(specs, self.bucket_bytes, device)
        if self.senders and self.rank == self.senders[0]:
            self._send_header(version, None if layout is old else layout)
        me = self.senders.index(self.rank) if self.rank in self.senders else None
        tensors = dict(named)
        works: list[Any] = [None] * self.inflight
        sent = 0
        for k, bucket in enumerate(layout.buckets):
            owner = me is not None and self._sender_of(k) == me
            sources = [tensors[s.name] for s in bucket.specs]
            if not (owner or self.is_rollout or any(_is_dtensor(t) for t in sources)):
                continue  # nothing to gather, send or load here
            views = None
            if owner:
                slot = sent % self.inflight
                sent += 1
                if works[slot] is not None:
                    works[slot].wait()  # the buffer's previous broadcast is done
                buf, views = self._views(slot, k)
            fulls = gather_bucket(sources, bucket.specs, views, self._meshes)
            if views is not None:
                todo = [i for i, v in enumerate(views) if fulls[i].data_ptr() != v.data_ptr()]
                _copy_all([views[i] for i in todo], [fulls[i] for i in todo])  # casts
                fulls = views  # a colocated engine loads from them too
            local = []
            if self.is_rollout and deferred.error is None:
                local = [(s.name, f.to(s.dtype)) for s, f in zip(bucket.specs, fulls)]
            del fulls
            if owner:
                works[slot] = dist.broadcast(
                    buf[: bucket.nbytes], src=self.rank, group=self.groups[me], async_op=True
                )
            if local:
                deferred(load_weights, local)
            del local
        for w in works:
            if w is not None:
                w.wait()
        deferred.raise_if_any()
        self.version = version
        return version

    def _out_dtype(self, t: Tensor) -> torch.dtype:
        return self.dtype if self.dtype is not None and t.is_floating_point() else t.dtype

    def _send_header(self, version: int, layout: _Layout | None) -> None:
        """``[version, spec bytes]`` then, only when the layout changed (``layout``), the spec."""
        raw = b""
        if layout is not None:
            header = {
                "device": layout.device.type,
                "bucket_bytes": self.bucket_bytes,
                "weights": [[s.name, _dtype_name(s.dtype), list(s.shape)] for s in layout.specs],
            }
            raw = json.dumps(header, separators=(",", ":")).encode()
        group = self.groups[0]
        hdev = _header_device(group)
        head = torch.tensor([int(version), len(raw)], dtype=torch.int64, device=hdev)
        dist.broadcast(head, src=self.rank, group=group)
        if raw:
            payload = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(hdev)
            dist.broadcast(payload, src=self.rank, group=group)

    # -- rollout side ---------------------------------------------------------------------
    @torch.no_grad()
    def receive(
        self, load_weights: LoadWeights, expected: Mapping[str, Sequence[int]] | None = None
    ) -> int:
        """Receive one sync on a rollout-only rank and load it; returns the policy version.

        ``expected`` (name -> shape, e.g. :func:`named_shapes` of the engine's model) is checked
        before any weight is loaded; a mismatch raises ValueError naming each parameter. Such
        errors (and those of ``load_weights``) are raised after the remaining buckets have been
        received without loading them, so the senders never hang.
        """
        if not self.is_rollout or self.is_actor:
            raise ValueError(
                f"rank {self.rank} is not a rollout-only rank: actor ranks call sync() "
                "(with load_weights when they are also rollout ranks)"
            )
        group = self.groups[0]
        hdev = _header_device(group)
        head = torch.empty(2, dtype=torch.int64, device=hdev)
        dist.broadcast(head, src=self.senders[0], group=group)
        version, size = (int(x) for x in head.tolist())
        if size:
            payload = torch.empty(size, dtype=torch.uint8, device=hdev)
            dist.broadcast(payload, src=self.senders[0], group=group)
            header = json.loads(payload.cpu().numpy().tobytes().decode())
            specs = tuple(
                WeightSpec(n, getattr(torch, d), tuple(s)) for n, d, s in header["weights"]
            )
            device = _local_device(header["device"])
            self._set_layout(specs, header["bucket_bytes"], device)
        layout = self._layout
        assert layout is not None, "the first weight sync must carry the layout"
        deferred = _Deferred()
        if expected is not None:
            deferred(check_weight_specs, expected, layout.specs)
        pending: deque[tuple[Any, Bucket, list[Tensor]]] = deque()

        def load_next() -> None:
            work, bucket, views = pending.popleft()
            work.wait()
            deferred(load_weights, list(zip((s.name for s in bucket.specs), views)))

        for k, bucket in enumerate(layout.buckets):
            if len(pending) == self.inflight:
                load_next()  # frees the slot bucket k reuses
            buf, views = self._views(k % self.inflight, k)
            i = self._sender_of(k)
            work = dist.broadcast(
                buf[: bucket.nbytes], src=self.senders[i], group=self.groups[i], async_op=True
            )
            pending.append((work, bucket, views))
        while pending:
            load_next()
        deferred.raise_if_any()
        self.version = version
        return version


def _tensor_device(t: Tensor) -> torch.device:
    if _is_dtensor(t):
        return t.to_local().device
    return t.device
