"""LM actor: chunked token log-probs, response windows, and an update equal to the plain one."""

import copy

import pytest
import torch
import torch.distributed as dist

from rlinf.algorithms import entropy_from_logits, logprobs_from_logits, ppo_policy_loss
from rlinf.dist.batch import TensorBatch, balanced_sizes
from rlinf.train.lm_actor import token_spans, token_window
from rlinf.train.logprob import token_entropy, token_logprobs
from rlinf.train.optim import fused_adam_if_possible

CORPUS = [
    f"Which is larger, {a} or {b}? \\boxed{{{max(a, b)}}}" for a in range(30) for b in range(9)
]


# -- token_logprobs / token_entropy -----------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_logprobs_match_log_softmax_values_and_grads(temperature, chunk_rows, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 37, generator=g) * 4).to(dtype)
    tokens = torch.randint(0, 37, (3, 5), generator=g)
    w = torch.randn(3, 5, generator=g).to(dtype)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = token_logprobs(a, tokens, temperature, chunk_rows=chunk_rows)
    want = logprobs_from_logits(b, tokens, temperature=temperature)
    assert got.dtype == want.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=tol)
    ent = token_entropy(logits, temperature, chunk_rows=chunk_rows)
    torch.testing.assert_close(ent, entropy_from_logits(logits / temperature), atol=tol, rtol=tol)


def test_token_logprobs_bf16_grad_keeps_dtype_and_inf_logits_are_safe():
    logits = torch.randn(4, 11).to(torch.bfloat16)
    logits[:, 3] = float("-inf")
    tokens = torch.tensor([0, 1, 2, 4])
    x = logits.clone().requires_grad_()
    lp = token_logprobs(x, tokens, chunk_rows=3)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, logprobs_from_logits(logits, tokens))
    lp.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    assert (x.grad[:, 3] == 0).all()
    ent = token_entropy(logits)
    assert torch.isfinite(ent).all()
    torch.testing.assert_close(ent, entropy_from_logits(logits))


def test_token_window_covers_responses_and_trims_padding():
    resp = torch.zeros(3, 10, dtype=torch.bool)
    attn = torch.zeros(3, 10, dtype=torch.bool)
    attn[0, :6], resp[0, 3:6] = True, True  # prompt 3, response 3
    attn[1, :8], resp[1, 5:8] = True, True  # prompt 5, response 3
    attn[2, :2] = True  # no response
    b = TensorBatch({"response_mask": resp, "attention_mask": attn})
    spans = token_spans(b)
    assert spans.tolist() == [[3, 6, 3], [5, 8, 3], [10, 2, 0]]
    assert token_window(spans, 10) == (3, 8)
    assert token_window(spans[1:2], 10) == (5, 8)
    assert token_window(spans[2:], 10) == (1, 2)  # a dummy window: the forward still runs


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_adam_same_steps_and_only_for_plain_params_of_the_device(cls):
    torch.manual_seed(0)
    w0, grads = torch.randn(5), [torch.randn(5) for _ in range(3)]
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    kw = dict(lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01)
    opt = cls([p], **kw)
    assert fused_adam_if_possible(opt) is opt  # CPU parameters, CUDA asked: unchanged
    fused = fused_adam_if_possible(cls([q], **kw), device_type="cpu")
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["lr"] == 0.1
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        fused.step()
    torch.testing.assert_close(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_token_logprobs_match_the_eager_chunks(dtype):
    """The compiled chunk kernels give the eager path's values and gradients (a ragged last chunk
    and a temperature included)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 7, 53, generator=g) * 4).to(dtype)
    tokens = torch.randint(0, 53, (2, 7), generator=g)
    w = torch.randn(2, 7, generator=g)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = token_logprobs(a, tokens, 0.7, chunk_rows=4, fused=True)
    want = token_logprobs(b, tokens, 0.7, chunk_rows=4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert a.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(
        token_entropy(logits, 0.7, chunk_rows=4, fused=True),
        token_entropy(logits, 0.7, chunk_rows=4),
        atol=1e-5,
        rtol=1e-5,
    )


# -- the actor on one gloo rank ---------------------------------------------------------------
@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request, tmp_path_factory):
    from rlinf.models.tiny_lm import build_tiny_lm

    out = tmp_path_factory.mktemp(request.param)
    return build_tiny_lm(out, CORPUS, arch=request.param, hidden_size=32, num_layers=2, seed=3)


def _actor(model_dir, **over):
    from rlinf.config import load_config
    from rlinf.train.lm_actor import LMActor

    overrides = [
        f"actor.model.model_path={model_dir}",
        "~actor.model.tiny",
        "actor.global_batch_size=6",
        "actor.micro_batch_size=4",
        "actor.optim.clip_grad=0.5",
        "algorithm.loss_agg_func=seq-mean-token-mean",
        "algorithm.sampling_params.temperature_train=0.9",
    ] + [f"{k}={v}" for k, v in over.items()]
    cfg = load_config("math_grpo_tiny.yaml", overrides, validate=False)
    return LMActor(cfg, dist.group.WORLD, torch.device("cpu"), total_steps=4)


def _batch(vocab: int, n: int = 6, L: int = 14) -> TensorBatch:
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(n, L, dtype=torch.long)
    attn = torch.zeros(n, L, dtype=torch.bool)
    resp = torch.zeros(n, L, dtype=torch.bool)
    for i in range(n):
        p, r = 2 + i % 3, [4, 6, 1, 0, 5, 3][i % 6]  # mixed prompt and response lengths
        ids[i, : p + r] = torch.randint(3, vocab, (p + r,), generator=g)
        attn[i, : p + r] = True
        resp[i, p : p + r] = True
    return TensorBatch(
        {
            "input_ids": ids,
            "attention_mask": attn,
            "response_mask": resp,
            "old_logprobs": -torch.rand(n, L, generator=g) * resp,
            "advantages": torch.randn(n, generator=g),
        }
    )


def _reference_logprobs(model, b, temperature):
    ids, attn = b["input_ids"], b["attention_mask"].long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    lp = logprobs_from_logits(logits[:, :-1].float(), ids[:, 1:], temperature=temperature)
    return torch.nn.functional.pad(lp, (1, 0))


def test_windowed_forward_equals_full_logits(world1, model_dir):
    actor = _actor(model_dir)
    b = _batch(actor.model.config.vocab_size)
    mask = b["response_mask"]
    want = _reference_logprobs(actor.model, b, 0.9) * mask
    got, ent = actor._forward(actor.model, b, 0.9, entropy=True)
    torch.testing.assert_close(got * mask, want, atol=1e-5, rtol=1e-5)
    assert ent.shape == got.shape and torch.isfinite(ent).all()
    lp_all = actor.compute_logprobs(b)  # micro-batched, each with its own window
    torch.testing.assert_close(lp_all * mask, want.detach(), atol=1e-5, rtol=1e-5)
    actor._keep_kwarg[id(actor.model)] = None  # a model without logits_to_keep: full logits
    with torch.no_grad():
        plain, _ = actor._forward(actor.model, b, 0.9)
    torch.testing.assert_close(plain * mask, want.detach(), atol=1e-5, rtol=1e-5)
    del actor._keep_kwarg[id(actor.model)]
    # gradients through the window equal those through the full logits
    w = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2)) * mask
    actor.model.zero_grad()
    (got * w).sum().backward()
    g1 = [p.grad.clone() for p in actor.model.parameters()]
    actor.model.zero_grad()
    (_reference_logprobs(actor.model, b, 0.9) * w).sum().backward()
    for a, c in zip(g1, (p.grad for p in actor.model.parameters()), strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("on_policy", [False, True])
def test_update_equals_plain_full_logits_update(world1, model_dir, on_policy):
    """update(): same row grouping, denominators, clipping and step as a plain full-logits loop."""
    actor = _actor(model_dir)
    ref_model = copy.deepcopy(actor.model)
    ref_opt = torch.optim.Adam(ref_model.parameters(), **_adam_kwargs(actor.optim))
    b = _batch(actor.model.config.vocab_size)
    a = actor.cfg.algorithm
    stats = actor.update(b, on_policy=on_policy)
    assert stats["train/grad_norm"][1] == 1 and "train/entropy" in stats
    assert ("train/rollout_logprob_diff" in stats) == on_policy
    # the reference: one minibatch of 6 rows in randperm order, micro-batches of <= 4 rows
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    mb = b[perm]
    ref_opt.zero_grad()
    start = 0
    for size in balanced_sizes(6, 2):
        m = mb[start : start + size]
        start += size
        lp = _reference_logprobs(ref_model, m, 0.9)
        old = lp.detach() if on_policy else m["old_logprobs"]
        adv = m["advantages"].unsqueeze(-1).expand_as(lp)
        loss, _ = ppo_policy_loss(
            lp,
            old,
            adv,
            m["response_mask"],
            clip_ratio_low=a.clip_ratio_low,
            clip_ratio_high=a.clip_ratio_high,
            loss_agg_mode=a.loss_agg_func,
            denom=6.0,
        )
        loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), 0.5)
    ref_opt.step()
    assert stats["train/grad_norm"][0] == pytest.approx(float(gn), rel=1e-4)
    for p, q in zip(actor.model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_give_the_eager_update(world1, model_dir, checkpointing):
    """actor.model.torch_compile: compiled decoder layers and fused log-prob kernels change
    nothing but speed (parameters after one update equal the eager actor's), with and without
    gradient checkpointing around the compiled layers."""
    eager = _actor(model_dir)
    compiled = _actor(
        model_dir,
        **{
            "actor.model.torch_compile": "true",
            "actor.model.gradient_checkpointing": str(checkpointing).lower(),
        },
    )
    b = _batch(eager.model.config.vocab_size)
    se = eager.update(b, on_policy=True)
    sc = compiled.update(b, on_policy=True)
    assert sc["train/grad_norm"][0] == pytest.approx(se["train/grad_norm"][0], rel=1e-4)
    for p, q in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def _fsdp_compiled_update(rank, world, model_dir):
    torch.manual_seed(0)
    eager = _actor(model_dir)
    compiled = _actor(model_dir, **{"actor.model.torch_compile": "true"})
    b = _batch(eager.model.config.vocab_size)[rank * 3 : rank * 3 + 3]
    eager.update(b, on_policy=True)
    compiled.update(b, on_policy=True)
    return [
        float((p.full_tensor() - q.full_tensor()).abs().max())
        for p, q in zip(compiled.model.parameters(), eager.model.parameters(), strict=True)
    ]


def test_compiled_layers_under_fsdp2_give_the_eager_update(tmp_path):
    """Two gloo actor ranks (FSDP2 hooks around the compiled layers): same update as eager
    (one architecture: each rank compiles, which costs half a minute on 2 CPU cores)."""
    from distributed import run_distributed

    from rlinf.models.tiny_lm import build_tiny_lm

    model_dir = build_tiny_lm(tmp_path, CORPUS, arch="qwen2", hidden_size=32, num_layers=2, seed=3)
    for diffs in run_distributed(_fsdp_compiled_update, 2, model_dir, timeout=300):
        assert max(diffs) < 1e-6


def _adam_kwargs(opt):
    g = opt.param_groups[0]
    return {"lr": g["lr"], "betas": g["betas"], "eps": g["eps"], "weight_decay": g["weight_decay"]}


def test_sft_step_is_the_token_mean_nll(world1, model_dir):
    actor = _actor(model_dir)
    b = _batch(actor.model.config.vocab_size)
    mask = b["response_mask"]
    with torch.no_grad():
        want = -(_reference_logprobs(actor.model, b, 1.0) * mask).sum() / mask.sum()
    assert actor.sft_step(b.select(["input_ids", "attention_mask", "response_mask"])) == (
        pytest.approx(float(want), rel=1e-5)
    )
