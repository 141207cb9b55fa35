"""The fused PPO actor-critic loss against the reference losses: values, metrics, gradients."""

import pytest
import torch
from torch.testing import assert_close

from rlinf.algorithms.fused_loss import (
    check_hyperparameters,
    ppo_actor_critic_loss,
    ppo_actor_critic_terms,
)
from rlinf.algorithms.kl import LOG_RATIO_CLAMP
from rlinf.algorithms.losses import ppo_policy_loss, value_loss

HP_CASES = [  # clip_low, clip_high, clip_c, value_clip, value_coef
    (0.2, 0.2, None, None, 0.5),
    (0.2, 0.28, None, 0.2, 1.0),
    (0.1, 0.3, 3.0, None, 0.25),
    (0.2, 0.2, 2.0, 0.1, 0.5),
]


def _inputs(B=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda scale=1.0: torch.randn(B, generator=g, dtype=torch.float64) * scale  # noqa: E731
    old_lp = r()
    # log-ratios spread over both clip edges, with a few beyond the log-ratio guard
    lp = old_lp + r(0.4)
    lp[:3] = old_lp[:3] + torch.tensor([LOG_RATIO_CLAMP + 1.0, -LOG_RATIO_CLAMP - 2.0, 0.0])
    adv = r()
    lp[3:6], adv[3:6] = old_lp[3:6] + 1.5, -1.0  # ratio e^1.5 > c, negative advantage: dual clip
    return lp, r(), old_lp, adv, r(), r()  # logprob, value, old_logprob, adv, old_value, ret


def _reference(lp, v, old_lp, adv, old_v, ret, hp):
    low, high, c, vclip, coef = hp
    pg, pm = ppo_policy_loss(
        lp, old_lp, adv, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c
    )
    vl, _ = value_loss(v, old_v, ret, clip=vclip)
    return pg + coef * vl, pg, vl, pm


@pytest.mark.parametrize("hp", HP_CASES)
def test_loss_metrics_and_gradients_match_the_reference(hp):
    lp, v, old_lp, adv, old_v, ret = _inputs()
    lp_r, v_r = lp.clone().requires_grad_(), v.clone().requires_grad_()
    want, pg, vl, pm = _reference(lp_r, v_r, old_lp, adv, old_v, ret, hp)
    want.backward()

    lp_f, v_f = lp.clone().requires_grad_(), v.clone().requires_grad_()
    low, high, c, vclip, coef = hp
    got, m = ppo_actor_critic_loss(lp_f, v_f, old_lp, adv, old_v, ret, low, high, c, vclip, coef)
    (got * 3.0).backward()  # an upstream gradient other than 1

    assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(m["policy_loss"], pg.detach(), rtol=1e-12, atol=1e-12)
    assert_close(m["value_loss"], vl.detach(), rtol=1e-12, atol=1e-12)
    for k in ("clip_frac", "approx_kl", "ratio_mean", "dual_clip_frac"):
        assert_close(m[k], pm[k], rtol=1e-12, atol=1e-12)
    assert_close(lp_f.grad, 3.0 * lp_r.grad, rtol=1e-10, atol=1e-14)
    assert_close(v_f.grad, 3.0 * v_r.grad, rtol=1e-10, atol=1e-14)
    assert lp_r.grad[:2].abs().max() == 0  # the log-ratio guard is active there
    if c is not None:
        assert float(m["dual_clip_frac"]) > 0  # the case exercises the dual clip


@pytest.mark.parametrize("hp", HP_CASES[:2])
def test_terms_are_the_autograd_gradient_without_a_graph(hp):
    lp, v, old_lp, adv, old_v, ret = _inputs(seed=1)
    lp_r, v_r = lp.clone().requires_grad_(), v.clone().requires_grad_()
    want = _reference(lp_r, v_r, old_lp, adv, old_v, ret, hp)[0]
    want.backward()
    with torch.no_grad():
        loss, metrics, d_lp, d_v = ppo_actor_critic_terms(lp, v, old_lp, adv, old_v, ret, hp)
    assert not loss.requires_grad and metrics.shape == (6,)
    assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    assert_close(d_lp, lp_r.grad, rtol=1e-10, atol=1e-14)
    assert_close(d_v, v_r.grad, rtol=1e-10, atol=1e-14)


def test_hyperparameters_and_shapes_are_checked():
    assert check_hyperparameters(0.2, None, None, None, 0.5) == (0.2, 0.2, None, None, 0.5)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        check_hyperparameters(0.2, 0.2, 1.0, None, 0.5)
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="one \\[B\\] vector"):
        ppo_actor_critic_loss(x, torch.zeros(5), x, x, x, x)
