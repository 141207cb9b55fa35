"""Advantage estimators and masked statistics against plain-Python reference loops."""

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from rlinf.algorithms.advantages import (
    episode_mask,
    gae,
    group_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    next_values_from,
    normalize_advantages,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)

# ---------------------------------------------------------------------------
# reference loops (plain Python lists)
# ---------------------------------------------------------------------------


def ref_gae(rewards, values, next_values, terminated, dones, gamma, lam):
    T, N = len(rewards), len(rewards[0])
    adv = [[0.0] * N for _ in range(T)]
    for n in range(N):
        a_next = 0.0
        for t in reversed(range(T)):
            boot = 0.0 if terminated[t][n] else gamma * next_values[t][n]
            delta = rewards[t][n] + boot - values[t][n]
            cont = 0.0 if dones[t][n] else 1.0
            a_next = delta + gamma * lam * cont * a_next
            adv[t][n] = a_next
    ret = [[adv[t][n] + values[t][n] for n in range(N)] for t in range(T)]
    return adv, ret


def ref_return_to_go(rewards, mask, gamma):
    out = []
    for r_row, m_row in zip(rewards, mask):
        row = [0.0] * len(r_row)
        g = 0.0
        for t in reversed(range(len(r_row))):
            if m_row[t]:
                g = r_row[t] + gamma * g
                row[t] = g
            else:
                g = 0.0
        out.append(row)
    return out


def random_rollout(T=9, N=6, seed=0, p_done=0.2):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    next_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    dones = torch.rand(T, N, generator=g) < p_done
    # Some dones are terminations, others truncations (done but not terminated).
    terminated = dones & (torch.rand(T, N, generator=g) < 0.5)
    return rewards, values, next_values, terminated, dones


# ---------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (1.0, 0.0), (0.5, 0.7)])
def test_gae_matches_reference_loop(gamma, lam):
    r, v, nv, term, done = random_rollout(seed=int(gamma * 100 + lam * 10))
    adv, ret = gae(r, v, nv, term, done, gamma, lam)
    ref_adv, ref_ret = ref_gae(
        r.tolist(), v.tolist(), nv.tolist(), term.tolist(), done.tolist(), gamma, lam
    )
    assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))
    assert_close(ret, torch.tensor(ref_ret, dtype=torch.float64))


def test_gae_accepts_float_flags_and_float32():
    r, v, nv, term, done = random_rollout(seed=3)
    a_bool, _ = gae(r.float(), v.float(), nv.float(), term, done, 0.99, 0.95)
    a_float, _ = gae(r.float(), v.float(), nv.float(), term.float(), done.float(), 0.99, 0.95)
    assert a_bool.dtype == torch.float32
    assert_close(a_bool, a_float)


def test_gae_truncation_bootstraps_but_termination_does_not():
    r = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.5, 0.5]])
    nv = torch.tensor([[10.0, float("nan")]])  # NaN next value must be ignored when terminated
    done = torch.tensor([[True, True]])
    term = torch.tensor([[False, True]])
    adv, ret = gae(r, v, nv, term, done, gamma=0.9, lam=0.95)
    assert_close(adv, torch.tensor([[1.0 + 0.9 * 10.0 - 0.5, 1.0 - 0.5]]))
    assert_close(ret, torch.tensor([[1.0 + 0.9 * 10.0, 1.0]]))


def test_gae_lambda_one_gives_discounted_returns():
    # No dones: with lam=1 the returns are the discounted sum plus the bootstrap.
    T, N, gamma = 6, 3, 0.9
    g = torch.Generator().manual_seed(1)
    r = torch.randn(T, N, generator=g, dtype=torch.float64)
    v = torch.randn(T, N, generator=g, dtype=torch.float64)
    last = torch.randn(N, generator=g, dtype=torch.float64)
    nv = next_values_from(v, last)
    zeros = torch.zeros(T, N, dtype=torch.bool)
    _, ret = gae(r, v, nv, zeros, zeros, gamma, 1.0)
    for n in range(N):
        for t in range(T):
            expected = sum(gamma ** (k - t) * r[k, n].item() for k in range(t, T))
            expected += gamma ** (T - t) * last[n].item()
            assert math.isclose(ret[t, n].item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_gae_done_cuts_the_trace():
    r, v, nv, term, done = random_rollout(T=8, N=1, seed=5, p_done=0.0)
    done[3, 0] = True
    adv1, _ = gae(r, v, nv, term, done, 0.99, 0.95)
    r2, v2, nv2 = r.clone(), v.clone(), nv.clone()
    r2[4:] += 100.0
    v2[4:] -= 7.0
    nv2[4:] += 3.0
    adv2, _ = gae(r2, v2, nv2, term, done, 0.99, 0.95)
    assert_close(adv1[:4], adv2[:4])
    assert not torch.allclose(adv1[4:], adv2[4:])


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(3, 2),
            torch.zeros(3, 2), 0.99, 0.95)  # fmt: skip


def test_next_values_from_uses_final_values_after_reset():
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    last = torch.tensor([7.0, 8.0])
    dones = torch.tensor([[False, True], [False, False], [True, False]])
    final = torch.full((3, 2), -1.0)
    assert_close(next_values_from(v, last), torch.tensor([[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]))
    assert_close(
        next_values_from(v, last, dones, final),
        torch.tensor([[3.0, -1.0], [5.0, 6.0], [-1.0, 8.0]]),
    )
    with pytest.raises(ValueError, match="dones"):
        next_values_from(v, last, None, final)


# ---------------------------------------------------------------------------
# episode mask
# ---------------------------------------------------------------------------


def test_episode_mask_matches_loop():
    g = torch.Generator().manual_seed(2)
    dones = torch.rand(12, 7, generator=g) < 0.2
    dones[:, 0] = False  # an env that never finishes
    dones[0, 1] = True  # an env that finishes at the first step
    mask = episode_mask(dones)
    assert mask.dtype == torch.bool
    for n in range(7):
        seen = False
        for t in range(12):
            assert bool(mask[t, n]) == (not seen), (t, n)
            seen = seen or bool(dones[t, n])
    assert mask[:, 0].all()
    assert mask[0, 1] and not mask[1:, 1].any()
    assert_close(episode_mask(dones.float()), mask)


# ---------------------------------------------------------------------------
# GRPO / Dr.GRPO / RLOO
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_match_loop(normalize_std):
    G = 4
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.2, 0.9, 0.1, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(scores, G, normalize_std=normalize_std, eps=1e-6)
    s = scores.tolist()
    expected = []
    for i in range(0, len(s), G):
        grp = s[i : i + G]
        mean = sum(grp) / G
        std = statistics.stdev(grp)
        for x in grp:
            expected.append((x - mean) / (std + 1e-6) if normalize_std else x - mean)
    assert_close(adv, torch.tensor(expected))
    # The all-equal last group carries no signal and no NaN.
    assert torch.all(adv[8:] == 0)


def test_group_advantages_edge_cases():
    assert torch.all(group_advantages(torch.tensor([3.0, 5.0]), 1) == 0)
    bools = group_advantages(torch.tensor([True, False, True, True]), 2)
    assert bools.dtype == torch.float32 and torch.isfinite(bools).all()
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)


def test_rloo_matches_leave_one_out_loop():
    G = 3
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(12, generator=g, dtype=torch.float64)
    adv = rloo_advantages(scores, G)
    s = scores.tolist()
    expected = []
    for i in range(0, len(s), G):
        grp = s[i : i + G]
        for j, x in enumerate(grp):
            others = [y for k, y in enumerate(grp) if k != j]
            expected.append(x - sum(others) / len(others))
    assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    assert_close(adv.view(-1, G).sum(1), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 2"):
        rloo_advantages(scores, 1)


# ---------------------------------------------------------------------------
# REINFORCE++
# ---------------------------------------------------------------------------


def right_padded_mask(lengths, L):
    return torch.tensor([[t < n for t in range(L)] for n in lengths])


def test_reinforce_pp_returns_match_loop():
    B, L, gamma = 5, 7, 0.9
    g = torch.Generator().manual_seed(6)
    rewards = torch.randn(B, L, generator=g, dtype=torch.float64)
    mask = right_padded_mask([7, 3, 0, 5, 1], L)
    mask[0, 2] = False  # a masked token in the middle ends the chain
    ret = reinforce_pp_returns(rewards, mask, gamma)
    expected = ref_return_to_go(rewards.tolist(), mask.tolist(), gamma)
    assert_close(ret, torch.tensor(expected, dtype=torch.float64))
    assert torch.all(ret[~mask] == 0)


def test_reinforce_pp_outcome_reward_spreads_back():
    # Outcome reward on the last valid token, gamma=1: every valid token sees it.
    mask = right_padded_mask([3, 2], 4)
    rewards = torch.zeros(2, 4)
    rewards[0, 2] = 1.0
    rewards[1, 1] = -1.0
    rewards[1, 3] = 50.0  # on a padding token: ignored
    ret = reinforce_pp_returns(rewards, mask, 1.0)
    assert_close(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]))


def test_reinforce_pp_advantages_whitened_over_valid_tokens():
    B, L, gamma = 6, 8, 0.95
    g = torch.Generator().manual_seed(7)
    rewards = torch.randn(B, L, generator=g, dtype=torch.float64)
    mask = right_padded_mask([8, 4, 6, 0, 2, 5], L)
    adv = reinforce_pp_advantages(rewards, mask, gamma)
    rtg = ref_return_to_go(rewards.tolist(), mask.tolist(), gamma)
    valid = [rtg[b][t] for b in range(B) for t in range(L) if mask[b, t]]
    mean, var = statistics.mean(valid), statistics.variance(valid)
    expected = [
        [(rtg[b][t] - mean) / math.sqrt(var + 1e-8) if mask[b, t] else 0.0 for t in range(L)]
        for b in range(B)
    ]
    assert_close(adv, torch.tensor(expected, dtype=torch.float64))


# ---------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------


def test_masked_mean_ignores_garbage_and_handles_empty_masks():
    x = torch.tensor([[1.0, 2.0, float("-inf")], [4.0, float("nan"), 6.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    m = masked_mean(x, mask)
    assert_close(m, torch.tensor(13.0 / 4))
    m.backward()
    assert torch.isfinite(x.grad).all()
    assert_close(x.grad, mask.float() / 4)
    assert_close(masked_mean(x.detach(), mask.float()), m.detach())
    assert_close(masked_mean(x.detach(), mask, dim=-1), torch.tensor([1.5, 5.0]))
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert masked_mean(x.detach(), empty).item() == 0.0
    assert_close(masked_mean(x.detach(), torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=-1),
                 torch.tensor([1.5, 0.0]))  # fmt: skip


def test_masked_mean_float_weights():
    x = torch.tensor([1.0, 3.0, 100.0])
    w = torch.tensor([0.25, 0.75, 0.0])
    assert_close(masked_mean(x, w), torch.tensor((0.25 * 1 + 0.75 * 3) / 1.0))


def test_masked_var_matches_statistics():
    x = torch.tensor([[1.0, 5.0, 2.0], [7.0, 3.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    valid = [1.0, 5.0, 7.0, 9.0]
    assert math.isclose(masked_var(x, mask).item(), statistics.variance(valid))
    assert math.isclose(masked_var(x, mask, unbiased=False).item(), statistics.pvariance(valid))
    assert masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0


def test_masked_whiten_edge_cases():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3 + 2
    mask = right_padded_mask([6, 2, 0, 4], 6)
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-9
    assert math.isclose(masked_var(w, mask).item(), 1.0, rel_tol=1e-6)
    assert torch.all(w[~mask] == 0)
    # shift_mean=False keeps the mean, rescales the spread.
    w2 = masked_whiten(x, mask, shift_mean=False)
    assert_close(masked_mean(w2, mask), masked_mean(x, mask))
    # Nothing valid, or all valid values equal: zeros, never NaN.
    assert torch.all(masked_whiten(x, torch.zeros_like(mask)) == 0)
    assert torch.all(masked_whiten(torch.full((3, 3), 5.0), torch.ones(3, 3)) == 0)


def test_normalize_advantages_without_mask():
    g = torch.Generator().manual_seed(9)
    adv = torch.randn(64, generator=g, dtype=torch.float64) * 4 + 1
    ref = (adv - adv.mean()) / adv.std()
    assert_close(normalize_advantages(adv), ref, rtol=1e-6, atol=1e-6)
    mask = torch.arange(64) < 40
    out = normalize_advantages(adv, mask)
    assert_close(out[:40], (adv[:40] - adv[:40].mean()) / adv[:40].std(), rtol=1e-6, atol=1e-6)
    assert torch.all(out[40:] == 0)
