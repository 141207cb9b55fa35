"""Policy/value losses, aggregation, entropy, log-probs and KL against plain-Python loops."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlinf.algorithms.kl import KL_KINDS, kl_estimate, kl_in_reward
from rlinf.algorithms.losses import (
    LOSS_AGG_MODES,
    aggregate,
    approx_kl,
    entropy_from_logits,
    logprobs_from_logits,
    ppo_policy_loss,
    value_loss,
)


def rand(*shape, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def right_padded_mask(lengths, L):
    return torch.tensor([[t < n for t in range(L)] for n in lengths])


# ---------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------


def ref_aggregate(loss, mask, mode):
    B, L = len(loss), len(loss[0])
    if mode == "token-mean":
        vals = [loss[b][t] for b in range(B) for t in range(L) if mask[b][t]]
        return sum(vals) / len(vals) if vals else 0.0
    rows = []
    for b in range(B):
        vals = [loss[b][t] for t in range(L) if mask[b][t]]
        if not vals:
            continue
        if mode == "seq-mean-token-sum":
            rows.append(sum(vals))
        elif mode == "seq-mean-token-mean":
            rows.append(sum(vals) / len(vals))
        else:
            rows.append(sum(vals) / L)
    return sum(rows) / len(rows) if rows else 0.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_matches_loop(mode):
    loss = rand(5, 6, seed=1)
    mask = right_padded_mask([6, 1, 0, 4, 3], 6)
    loss[~mask] = float("nan")  # garbage in padding must not leak
    out = aggregate(loss, mask, mode)
    expected = ref_aggregate(loss.tolist(), mask.tolist(), mode)
    assert math.isclose(out.item(), expected, rel_tol=1e-12)
    assert_close(aggregate(loss, mask.double(), mode), out)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_1d_is_masked_mean_and_empty_is_zero(mode):
    x = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert_close(aggregate(x, None, mode), torch.tensor(4.0))
    assert_close(aggregate(x, torch.tensor([1, 1, 1, 0]).bool(), mode), torch.tensor(2.0))
    empty = torch.zeros(2, 3, dtype=torch.bool)
    xx = torch.ones(2, 3, requires_grad=True)
    out = aggregate(xx, empty, mode)
    out.backward()
    assert out.item() == 0.0 and torch.all(xx.grad == 0)


def test_aggregate_denom_makes_micro_batches_exact():
    loss = rand(8, 5, seed=2)
    mask = right_padded_mask([5, 2, 4, 1, 3, 5, 2, 4], 5)
    full = aggregate(loss, mask, "token-mean")
    n_tok = mask.sum()
    parts = sum(
        aggregate(loss[i : i + 2], mask[i : i + 2], "token-mean", n_tok) for i in (0, 2, 4, 6)
    )
    assert_close(parts, full)
    full_seq = aggregate(loss, mask, "seq-mean-token-mean")
    parts_seq = sum(
        aggregate(loss[i : i + 4], mask[i : i + 4], "seq-mean-token-mean", 8) for i in (0, 4)
    )
    assert_close(parts_seq, full_seq)


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate(torch.zeros(2, 2), None, "token-sum")
    with pytest.raises(ValueError, match="shape"):
        aggregate(torch.zeros(2, 2), torch.ones(2, 3), "token-mean")


# ---------------------------------------------------------------------------
# PPO policy loss
# ---------------------------------------------------------------------------


def ref_ppo(logp, old, adv, mask, low, high, c, mode):
    per, clip, dual, kl, ratios = [], [], [], [], []
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            r = math.exp(logp[b][t] - old[b][t])
            a = adv[b][t]
            l1 = -a * r
            l2 = -a * min(max(r, 1 - low), 1 + high)
            lc = max(l1, l2)
            out = lc
            is_dual = False
            if c is not None and a < 0:
                out = min(lc, -a * c)
                is_dual = lc > -a * c
            row.append(out)
            if mask[b][t]:
                clip.append(float(l2 > l1))
                dual.append(float(is_dual))
                kl.append(r - 1 - math.log(r))
                ratios.append(r)
        per.append(row)
    n = len(clip)
    metrics = {
        "clip_frac": sum(clip) / n,
        "dual_clip_frac": sum(dual) / n,
        "approx_kl": sum(kl) / n,
        "ratio_mean": sum(ratios) / n,
    }
    return ref_aggregate(per, mask, mode), metrics


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("low,high,c", [(0.2, 0.2, None), (0.2, 0.28, None), (0.2, 0.28, 3.0)])
def test_ppo_policy_loss_matches_loop(mode, low, high, c):
    B, L = 6, 9
    old = rand(B, L, seed=3) - 2.0
    logp = old + rand(B, L, seed=4, scale=1.0)  # ratios well outside the clip range too
    adv = rand(B, L, seed=5, scale=2.0)
    mask = right_padded_mask([9, 4, 7, 1, 9, 5], L)
    loss, metrics = ppo_policy_loss(logp, old, adv, mask, low, high, c, mode)
    ref_loss, ref_metrics = ref_ppo(
        logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), low, high, c, mode
    )
    assert math.isclose(loss.item(), ref_loss, rel_tol=1e-10)
    for k, v in ref_metrics.items():
        assert math.isclose(metrics[k].item(), v, rel_tol=1e-10, abs_tol=1e-12), k
    assert 0 < metrics["clip_frac"].item() < 1
    if c is not None:
        assert metrics["dual_clip_frac"].item() > 0
    assert all(not v.requires_grad for v in metrics.values())


def test_ppo_policy_loss_1d_embodied_and_broadcast_advantages():
    old = rand(16, seed=6)
    logp = old + rand(16, seed=7, scale=0.3)
    adv = rand(16, seed=8)
    loss, m = ppo_policy_loss(logp, old, adv, clip_ratio_low=0.2)
    ref_loss, ref_m = ref_ppo(
        [[x] for x in logp.tolist()], [[x] for x in old.tolist()], [[x] for x in adv.tolist()],
        [[True]] * 16, 0.2, 0.2, None, "token-mean",
    )  # fmt: skip
    assert math.isclose(loss.item(), ref_loss, rel_tol=1e-10)
    assert math.isclose(m["clip_frac"].item(), ref_m["clip_frac"])
    # [B] advantages broadcast over the tokens of [B, L] log-probs.
    old2, logp2 = rand(4, 3, seed=9), rand(4, 3, seed=10)
    a = rand(4, seed=11)
    l_b, _ = ppo_policy_loss(logp2, old2, a)
    l_full, _ = ppo_policy_loss(logp2, old2, a[:, None].expand(4, 3))
    assert_close(l_b, l_full)


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    logp = rand(3, 5, seed=12).requires_grad_()
    adv = rand(3, 5, seed=13)
    loss, m = ppo_policy_loss(logp, logp.detach(), adv, clip_ratio_c=3.0)
    assert_close(loss, -adv.mean())
    assert m["clip_frac"].item() == 0 and m["dual_clip_frac"].item() == 0
    assert m["approx_kl"].item() == 0 and m["ratio_mean"].item() == 1
    loss.backward()
    assert_close(logp.grad, -adv / adv.numel())  # d ratio / d logp = ratio = 1


def test_ppo_clip_and_dual_clip_zero_the_gradient():
    old = torch.zeros(4, dtype=torch.float64)
    # ratios: 2.0 (A>0, clipped), 0.5 (A<0, clipped), 5.0 (A<0, dual clipped), 1.1 (A>0 free)
    logp = torch.log(torch.tensor([2.0, 0.5, 5.0, 1.1], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    loss, m = ppo_policy_loss(logp, old, adv, clip_ratio_low=0.2, clip_ratio_c=3.0)
    loss.backward()
    assert_close(logp.grad, torch.tensor([0.0, 0.0, 0.0, -1.1 / 4], dtype=torch.float64))
    per = torch.tensor([-1.2, 0.8, 3.0, -1.1], dtype=torch.float64)
    assert_close(loss, per.mean())
    # Rows 0 and 1 are clipped; row 2 (A<0, ratio>1+eps) is bounded by the dual clip only.
    assert m["clip_frac"].item() == 0.5
    assert m["dual_clip_frac"].item() == 0.25
    # Dual clip never touches positive advantages, however large the ratio.
    big = torch.log(torch.tensor([50.0], dtype=torch.float64))
    l_pos, m_pos = ppo_policy_loss(big, torch.zeros(1, dtype=torch.float64),
                                   torch.ones(1, dtype=torch.float64), clip_ratio_c=3.0)  # fmt: skip
    assert_close(l_pos, torch.tensor(-1.2, dtype=torch.float64))
    assert m_pos["dual_clip_frac"].item() == 0


def test_ppo_policy_loss_padding_with_inf_stays_finite():
    logp = rand(2, 4, seed=14)
    logp[1, 2:] = float("-inf")
    logp.requires_grad_()
    old = rand(2, 4, seed=15)
    old[1, 2:] = float("-inf")
    adv = rand(2, 4, seed=16)
    adv[1, 2:] = float("nan")
    mask = right_padded_mask([4, 2], 4)
    loss, m = ppo_policy_loss(logp, old, adv, mask, clip_ratio_c=3.0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in m.values())
    assert torch.isfinite(logp.grad).all() and torch.all(logp.grad[1, 2:] == 0)
    # Huge log-ratio differences are clamped, not overflowed.
    l2, m2 = ppo_policy_loss(torch.tensor([500.0]), torch.tensor([0.0]), torch.tensor([-1.0]))
    assert torch.isfinite(l2) and torch.isfinite(m2["approx_kl"])


def test_ppo_policy_loss_validates_arguments():
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_policy_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="shape"):
        ppo_policy_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2))


# ---------------------------------------------------------------------------
# value loss
# ---------------------------------------------------------------------------


def ref_value_loss(values, old, returns, mask, clip, huber, mode):
    def f(pred, ret):
        e = pred - ret
        if huber is None or abs(e) <= huber:
            return 0.5 * e * e
        return huber * (abs(e) - 0.5 * huber)

    per, clipped = [], []
    for b in range(len(values)):
        row = []
        for t in range(len(values[b])):
            l1 = f(values[b][t], returns[b][t])
            if clip is None:
                row.append(l1)
                l2 = l1
            else:
                pc = old[b][t] + min(max(values[b][t] - old[b][t], -clip), clip)
                l2 = f(pc, returns[b][t])
                row.append(max(l1, l2))
            if mask[b][t]:
                clipped.append(float(l2 > l1))
        per.append(row)
    return ref_aggregate(per, mask, mode), sum(clipped) / len(clipped)


@pytest.mark.parametrize("clip,huber", [(None, None), (0.2, None), (0.2, 1.0), (None, 0.5)])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_value_loss_matches_loop(clip, huber, mode):
    B, L = 5, 6
    old = rand(B, L, seed=17)
    values = old + rand(B, L, seed=18, scale=0.5)
    returns = rand(B, L, seed=19, scale=2.0)
    mask = right_padded_mask([6, 3, 5, 2, 6], L)
    loss, m = value_loss(values, old, returns, mask, clip, huber, mode)
    ref, ref_frac = ref_value_loss(
        values.tolist(), old.tolist(), returns.tolist(), mask.tolist(), clip, huber, mode
    )
    assert math.isclose(loss.item(), ref, rel_tol=1e-10)
    assert math.isclose(m["value_clip_frac"].item(), ref_frac)
    if clip is not None:
        assert m["value_clip_frac"].item() > 0


def test_value_loss_explained_variance_and_padding():
    returns = rand(32, seed=20)
    _, m = value_loss(returns.clone(), returns, returns)
    assert math.isclose(m["explained_variance"].item(), 1.0)
    _, m = value_loss(torch.full_like(returns, returns.mean().item()), returns, returns)
    assert abs(m["explained_variance"].item()) < 1e-9
    _, m = value_loss(torch.zeros(4), torch.zeros(4), torch.ones(4))
    assert math.isnan(m["explained_variance"].item())
    # Garbage in padded positions neither leaks into the loss nor into the gradient.
    v = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    ret = torch.tensor([[0.0, 0.0], [0.0, float("nan")]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _ = value_loss(v, v.detach(), ret, mask, clip=0.1)
    loss.backward()
    assert_close(loss, torch.tensor((0.5 + 2.0 + 4.5) / 3))
    assert torch.isfinite(v.grad).all() and v.grad[1, 1] == 0


# ---------------------------------------------------------------------------
# entropy and log-probs from logits
# ---------------------------------------------------------------------------


def ref_entropy(row):
    m = max(row)
    z = sum(math.exp(x - m) for x in row)
    ps = [math.exp(x - m) / z for x in row]
    return -sum(p * math.log(p) for p in ps if p > 0)


def ref_logprob(row, tok, temp):
    xs = [x / temp for x in row]
    m = max(xs)
    return xs[tok] - (m + math.log(sum(math.exp(x - m) for x in xs)))


def test_entropy_matches_loop_and_chunks():
    logits = rand(3, 4, 11, seed=21, scale=3.0)
    ent = entropy_from_logits(logits)
    assert ent.shape == (3, 4)
    expected = [[ref_entropy(logits[b, t].tolist()) for t in range(4)] for b in range(3)]
    assert_close(ent, torch.tensor(expected, dtype=torch.float64))
    assert_close(entropy_from_logits(logits, chunk_size=5), ent)
    # float32 result for low-precision input
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32


def test_entropy_extremes_are_stable():
    V = 8
    uniform = torch.zeros(2, V)
    assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(V)))
    big = torch.tensor([[1e4, 0.0, -1e4]])
    assert_close(entropy_from_logits(big), torch.zeros(1), atol=1e-6, rtol=0)
    banned = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]], requires_grad=True)
    ent = entropy_from_logits(banned)
    assert_close(ent, torch.tensor([math.log(2)]))
    ent.sum().backward()
    assert torch.isfinite(banned.grad).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_matches_loop(temperature):
    B, L, V = 3, 5, 13
    logits = rand(B, L, V, seed=22, scale=4.0)
    g = torch.Generator().manual_seed(23)
    tokens = torch.randint(0, V, (B, L), generator=g)
    lp = logprobs_from_logits(logits, tokens, temperature)
    expected = [
        [ref_logprob(logits[b, t].tolist(), int(tokens[b, t]), temperature) for t in range(L)]
        for b in range(B)
    ]
    assert_close(lp, torch.tensor(expected, dtype=torch.float64))
    assert_close(logprobs_from_logits(logits, tokens, temperature, chunk_size=4), lp)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
    assert_close(lp, ref)


def test_logprobs_from_logits_stable_grads_and_validation():
    logits = torch.tensor([[[3e4, 0.0, -3e4]]], requires_grad=True)
    lp = logprobs_from_logits(logits, torch.tensor([[1]]))
    assert_close(lp, torch.tensor([[-3e4]]))
    lp.sum().backward()
    assert_close(logits.grad, torch.tensor([[[-1.0, 1.0, 0.0]]]))
    bf = logprobs_from_logits(rand(2, 3, 7, seed=24).to(torch.bfloat16), torch.zeros(2, 3).long())
    assert bf.dtype == torch.float32 and torch.all(bf <= 0)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(logits, torch.tensor([[1]]), temperature=0.0)
    with pytest.raises(ValueError, match="tokens"):
        logprobs_from_logits(logits, torch.tensor([1, 2]))


# ---------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------


def test_approx_kl_matches_loop():
    old = rand(4, 6, seed=25)
    new = old + rand(4, 6, seed=26, scale=0.4)
    mask = right_padded_mask([6, 2, 5, 0], 6)
    vals = [
        math.exp(n - o) - 1 - (n - o)
        for nr, orow, mr in zip(new.tolist(), old.tolist(), mask.tolist())
        for n, o, m in zip(nr, orow, mr)
        if m
    ]
    assert math.isclose(approx_kl(new, old, mask).item(), sum(vals) / len(vals), rel_tol=1e-10)
    assert approx_kl(new, new).item() == 0 and approx_kl(new, old).item() > 0


@pytest.mark.parametrize("kind", KL_KINDS)
def test_kl_estimate_matches_formulas(kind):
    logp = rand(30, seed=27, scale=2.0)
    ref = rand(30, seed=28, scale=2.0)
    out = kl_estimate(logp, ref, kind)
    canonical = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}.get(kind, kind)
    for i in range(30):
        lr = logp[i].item() - ref[i].item()
        expected = {
            "k1": lr,
            "k2": 0.5 * lr * lr,
            "k3": min(max(math.exp(-lr) - 1 + lr, -10.0), 10.0),
            "abs": abs(lr),
        }[canonical]
        assert math.isclose(out[i].item(), expected, rel_tol=1e-10, abs_tol=1e-12)


def test_kl_estimators_are_unbiased_on_samples():
    # KL(p || q) for two categoricals, estimated from samples of p: k1 and k3 are unbiased.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    g = torch.Generator().manual_seed(29)
    s = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[s], q.log()[s], kind).mean().item()
        assert abs(est - true_kl) < 0.01, (kind, est, true_kl)
    assert (kl_estimate(p.log()[s], q.log()[s], "k3") >= 0).all()


def test_kl_estimate_clamps_and_validates():
    out = kl_estimate(torch.tensor([-100.0, 100.0]), torch.tensor([0.0, 0.0]), "low_var_kl")
    assert torch.isfinite(out).all() and out[0].item() == 10.0
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_kl_in_reward():
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]], requires_grad=True)
    mask = right_padded_mask([3, 2], 3)
    out = kl_in_reward(r, kl, beta=0.5, mask=mask)
    assert_close(out, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0]]))
    assert not out.requires_grad
    assert_close(kl_in_reward(r, kl, 0.5)[1, 2], torch.tensor(-4.5))
