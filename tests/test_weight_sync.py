"""Weight sync on gloo ranks: FSDP2 actor -> plain and fused rollout engines, hybrid, colocated."""

import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed
from torch import nn

from rlinf.dist.weight_sync import (
    WeightSpec,
    WeightSync,
    check_weight_specs,
    load_into_module,
    named_shapes,
    plan_buckets,
    weight_sync_group_specs,
)

HIDDEN, KV, INTER, VOCAB, LAYERS = 16, 8, 24, 33, 2  # odd vocab: uneven FSDP shards


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, HIDDEN)
        self.k_proj = nn.Linear(HIDDEN, KV)
        self.v_proj = nn.Linear(HIDDEN, KV)
        self.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.up_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.down_proj = nn.Linear(INTER, HIDDEN, bias=False)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attention()
        self.mlp = Mlp()
        self.input_layernorm = nn.LayerNorm(HIDDEN)

    def forward(self, h):
        a = self.self_attn
        x = self.input_layernorm(h)
        kv = (a.k_proj(x) * a.v_proj(x)).sum(-1, keepdim=True)
        h = h + a.o_proj(a.q_proj(x) + kv)
        m = self.mlp
        return h + m.down_proj(torch.nn.functional.silu(m.gate_proj(h)) * m.up_proj(h))


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(HIDDEN)


class TinyLM(nn.Module):
    """HF-style names (model.layers.0.self_attn.q_proj.weight, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Body()
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h)
        return self.lm_head(self.model.norm(h))


class FusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj = nn.Linear(HIDDEN, HIDDEN + 2 * KV)
        self.self_attn.o_proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = nn.Linear(HIDDEN, 2 * INTER, bias=False)
        self.mlp.down_proj = nn.Linear(INTER, HIDDEN, bias=False)
        self.input_layernorm = nn.LayerNorm(HIDDEN)


class FusedLM(nn.Module):
    """An inference engine's layout: q/k/v fused into qkv_proj, gate/up into gate_up_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.model.layers = nn.ModuleList(FusedLayer() for _ in range(LAYERS))
        self.model.norm = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)


FUSED = {  # actor name part -> (engine name part, rows)
    "q_proj": ("qkv_proj", slice(0, HIDDEN)),
    "k_proj": ("qkv_proj", slice(HIDDEN, HIDDEN + KV)),
    "v_proj": ("qkv_proj", slice(HIDDEN + KV, HIDDEN + 2 * KV)),
    "gate_proj": ("gate_up_proj", slice(0, INTER)),
    "up_proj": ("gate_up_proj", slice(INTER, 2 * INTER)),
}


def fused_rename(name: str):
    """The name-mapping hook of the fused engine: HF name -> (fused name, rows)."""
    for part, (fused, rows) in FUSED.items():
        if f".{part}." in name:
            return name.replace(part, fused), rows
    return name


def unfuse(engine: nn.Module) -> dict:
    """The fused engine's weights under HF names (to compare with the actor)."""
    out = {}
    for name, p in engine.state_dict().items():
        parts = [(part, rows) for part, (fused, rows) in FUSED.items() if f".{fused}." in name]
        for part, rows in parts:
            out[name.replace(FUSED[part][0], part)] = p[rows]
        if not parts:
            out[name] = p
    return out


def _bits(t: torch.Tensor) -> list:
    view = {4: torch.int32, 2: torch.int16}[t.element_size()]
    return t.detach().contiguous().view(view).flatten().tolist()


def _fsdp_actor(group):
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TinyLM()
    mesh = DeviceMesh.from_group(group, "cpu")
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train_step(model) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.arange(6).reshape(2, 3)).float().pow(2).mean().backward()
    opt.step()


def _full_bits(model, dtype=None) -> dict:
    out = {}
    for n, p in model.named_parameters():
        full = p.full_tensor().detach()
        out[n] = _bits(full if dtype is None else full.to(dtype))
    return out


def _new_groups(actor, rollout):
    return [dist.new_group(ranks) for ranks in weight_sync_group_specs(actor, rollout)]


def _cases(rank: int, world_size: int) -> dict:
    out: dict = {}
    actor_group = dist.new_group([0, 1])
    g_disagg = _new_groups([0, 1], [2, 3])
    g_hybrid = _new_groups([0, 1], [1, 2])
    g_colo = _new_groups([0, 1], [0, 1])
    g_remote = _new_groups([0], [1])
    actor = _fsdp_actor(actor_group) if rank in (0, 1) else None
    tiny = 0.0015  # MB: about 1.5 KB per bucket, so the model is cut into dozens of buckets

    # disaggregated: 2 FSDP2 ranks -> a plain engine (rank 2) and a fused engine (rank 3)
    fp32 = WeightSync([0, 1], [2, 3], g_disagg, bucket_mb=tiny)
    bf16 = WeightSync([0, 1], [2, 3], g_disagg, bucket_mb=tiny, dtype=torch.bfloat16)
    if rank in (0, 1):
        out["full_fp32"] = _full_bits(actor)
        fp32.sync(actor, version=1)
        out["buckets"] = len(fp32.last_buckets)
        _train_step(actor)
        out["full_after_step"] = _full_bits(actor)
        out["full_bf16"] = _full_bits(actor, torch.bfloat16)
        bf16.sync(actor, version=2)
    if rank in (2, 3):
        engine = TinyLM() if rank == 2 else FusedLM()
        load = load_into_module(engine, None if rank == 2 else fused_rename)
        expected = named_shapes(TinyLM())
        out["version_fp32"] = fp32.receive(load, expected=expected)
        out["engine_fp32"] = {n: _bits(t) for n, t in unfuse(engine).items()}
        engine = engine.to(torch.bfloat16)
        load = load_into_module(engine, None if rank == 2 else fused_rename)
        out["version_bf16"] = bf16.receive(load)
        out["engine_bf16"] = {n: _bits(t) for n, t in unfuse(engine).items()}

    # hybrid: actor 0-1, rollout 1-2 -> rank 1 loads in place, rank 2 receives
    hybrid = WeightSync([0, 1], [1, 2], g_hybrid, bucket_mb=tiny)
    if rank in (0, 1, 2):
        engine = TinyLM()
        load = load_into_module(engine)
        if rank in (0, 1):
            hybrid.sync(actor, version=3, load_weights=load if rank == 1 else None)
        else:
            hybrid.receive(load)
        if rank in (1, 2):
            out["hybrid"] = {n: _bits(t) for n, t in engine.state_dict().items()}
        out["hybrid_version"] = hybrid.version

    # fully colocated FSDP2: no groups, each rank gathers bucket by bucket and loads in place
    colo = WeightSync([0, 1], [0, 1], g_colo, bucket_mb=0.004)
    if rank in (0, 1):
        engine = TinyLM()
        loader = load_into_module(engine)
        calls = []

        def load(weights):
            weights = list(weights)
            calls.append(sum(t.numel() * t.element_size() for _, t in weights))
            loader(weights)

        colo.sync(actor, version=4, load_weights=load, expected=named_shapes(engine))
        out["colo_groups"] = len(g_colo)
        out["colo_calls"] = calls
        out["colo_bucket_bytes"] = colo.bucket_bytes
        out["colo"] = {n: _bits(t) for n, t in engine.state_dict().items()}

    # colocated plain module on one rank: the engine receives the actor's own tensors
    solo = WeightSync([3], [3], [], bucket_mb=tiny)
    if rank == 3:
        torch.manual_seed(1)
        plain, seen = TinyLM(), []
        solo.sync(plain, version=5, load_weights=lambda ws: seen.extend(t for _, t in ws))
        params = [p.data_ptr() for p in plain.parameters()]
        out["solo_no_copy"] = [t.data_ptr() for t in seen] == params
        try:
            solo.sync(plain, 6, load_weights=lambda ws: None, expected={"lm_head.weight": (1, 2)})
        except ValueError as e:
            out["solo_mismatch"] = str(e)

    # remote mismatch: the receiver reports it after draining, so the next sync still works
    remote = WeightSync([0], [1], g_remote, bucket_mb=1)
    if rank == 0:
        torch.manual_seed(2)
        sender = nn.Linear(4, 3)
        remote.sync(sender, version=7)
        remote.sync(sender, version=8)
    if rank == 1:
        try:
            remote.receive(load_into_module(nn.Linear(4, 2)))
        except ValueError as e:
            out["remote_mismatch"] = str(e)
        torch.manual_seed(2)
        reference, good = nn.Linear(4, 3), nn.Linear(4, 3)  # reference == the sender's
        out["after_mismatch"] = remote.receive(load_into_module(good))
        out["after_mismatch_ok"] = torch.equal(good.weight, reference.weight)
    return out


@pytest.fixture(scope="module")
def results():
    return run_distributed(_cases, 4, timeout=100)


def test_fsdp2_to_two_rollout_ranks_is_bit_identical(results):
    assert results[0]["buckets"] > 10  # many buckets, alternating between the two senders
    assert results[0]["full_fp32"] == results[1]["full_fp32"]
    for rank in (2, 3):  # plain engine and fused (qkv, gate_up) engine
        assert results[rank]["version_fp32"] == 1
        assert results[rank]["engine_fp32"] == results[0]["full_fp32"]


def test_sender_casts_to_bf16_and_version_travels(results):
    assert results[0]["full_bf16"] != results[0]["full_fp32"]  # the train step changed weights
    for rank in (2, 3):
        assert results[rank]["version_bf16"] == 2
        assert results[rank]["engine_bf16"] == results[0]["full_bf16"]


def test_hybrid_placement_loads_colocated_and_remote(results):
    for rank in (1, 2):
        assert results[rank]["hybrid"] == results[0]["full_after_step"]
        assert results[rank]["hybrid_version"] == 3
    assert results[0]["hybrid_version"] == 3


def test_colocated_loads_in_place_one_bucket_at_a_time(results):
    assert results[0]["colo_groups"] == 0  # no broadcast group at all
    calls, bucket = results[0]["colo_calls"], results[0]["colo_bucket_bytes"]
    largest = VOCAB * HIDDEN * 4
    assert len(calls) > 3 and max(calls) <= max(bucket, largest)
    assert sum(calls) == sum(len(b) * 4 for b in results[0]["colo"].values())
    assert results[0]["colo"] == results[1]["colo"] == results[0]["full_after_step"]


def test_colocated_plain_module_is_loaded_without_copies(results):
    assert results[3]["solo_no_copy"] is True


def test_mismatch_names_parameter_and_both_shapes(results):
    msg = results[3]["solo_mismatch"]
    assert "parameter 'lm_head.weight': actor shape (33, 16), rollout expects (1, 2)" in msg
    assert "'model.norm.bias'" in msg  # sent but not expected


def test_remote_mismatch_names_the_parameter_and_does_not_hang(results):
    msg = results[1]["remote_mismatch"]
    assert "parameter 'weight' has shape (3, 4) on the actor" in msg and "(2, 4)" in msg
    assert results[1]["after_mismatch"] == 8 and results[1]["after_mismatch_ok"]


def test_plan_buckets_and_checks_are_pure():
    specs = [WeightSpec(f"w{i}", torch.float32, (10,)) for i in range(5)]
    buckets = plan_buckets(specs + [WeightSpec("big", torch.bfloat16, (500,))], 128)
    assert [len(b.specs) for b in buckets] == [2, 2, 1, 1]  # 40 B each, 64 B aligned
    assert buckets[0].offsets == (0, 64) and buckets[-1].nbytes == 1000
    assert weight_sync_group_specs([0, 1], [2, 3]) == [[0, 2, 3], [1, 2, 3]]
    assert weight_sync_group_specs([0, 1, 2, 3], [2, 5], num_senders=2) == [[0, 5], [2, 5]]
    assert weight_sync_group_specs([0, 1], [1, 0]) == []
    with pytest.raises(ValueError, match="'w9'"):
        check_weight_specs({"w9": (10,)}, specs[:1])
    with pytest.raises(ValueError, match="needs 2"):
        WeightSync([0, 1], [2], [None])
    engine = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="no weight 'nope'"):
        load_into_module(engine)([("nope", torch.zeros(1))])
