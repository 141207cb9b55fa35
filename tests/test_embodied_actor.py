"""The embodied actor's autograd-free update path against its autograd path."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from rlinf.config import load_config
from rlinf.dist.batch import TensorBatch
from rlinf.models.actor_critic import MLPActorCritic
from rlinf.train.embodied_actor import EmbodiedActor

OBS, ACT = 17, gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
DISCRETE = gym.spaces.Discrete(3)


def _batch(model, n=256, seed=0) -> TensorBatch:
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(n, OBS, generator=g), torch.randn(n, 6, generator=g)
    if model.discrete:
        act = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        lp, _, v = model.evaluate(obs, act)
    return TensorBatch(
        {
            "obs": obs,
            "action": act,
            "logprob": lp + 0.05 * torch.randn(n, generator=g),
            "value": v,
            "advantage": torch.randn(n, generator=g),
            "return": v + torch.randn(n, generator=g),
            "mask": torch.ones(n, dtype=torch.bool),
        }
    )


def _actors(overrides, shared=False, space=ACT):
    cfg = load_config(
        "halfcheetah_ppo.yaml",
        ["algorithm.update_epoch=2", "actor.global_batch_size=64", *overrides],
        detected_accelerators=0,
    )
    torch.manual_seed(0)
    model = MLPActorCritic(OBS, space, (32, 32), shared_trunk=shared, log_std_init=-0.5)
    kw = dict(group=dist.group.WORLD, device=torch.device("cpu"), total_updates=3, seed=5)
    fast = EmbodiedActor(copy.deepcopy(model), cfg, num_minibatches=4, **kw)
    ref = EmbodiedActor(copy.deepcopy(model), cfg, num_minibatches=4, **kw)
    ref._grad_path = None  # the autograd path (fused loss node + backward)
    return fast, ref


CASES = {
    "halfcheetah": ([], False, ACT),
    "micro_batches": (["actor.micro_batch_size=24"], False, ACT),  # 64 rows as 22 + 21 + 21
    "entropy_value_clip": (
        ["algorithm.entropy_bonus=0.01", "algorithm.value_clip=0.2"],
        False,
        ACT,
    ),
    "shared_trunk_dual_clip": (["algorithm.clip_ratio_c=3.0"], True, ACT),
    "discrete": ([], False, DISCRETE),
    "discrete_entropy_micro": (
        ["algorithm.entropy_bonus=0.05", "actor.micro_batch_size=24"],
        True,
        DISCRETE,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manual_update_equals_autograd_update(world1, case):
    overrides, shared, space = CASES[case]
    fast, ref = _actors(overrides, shared, space)
    assert fast._grad_path is not None
    before = copy.deepcopy(fast.model.state_dict())
    for step in range(2):  # the second update starts from the optimizer state of the first
        batch = _batch(fast.model, seed=step)
        got, want = fast.update(batch), ref.update(batch)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k][1] == want[k][1], k
            assert_close(got[k][0], want[k][0], rtol=1e-4, atol=1e-6, msg=k)
    for (name, p), q in zip(fast.model.named_parameters(), ref.model.parameters(), strict=True):
        assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
        assert not torch.equal(p, before[name]), name  # the update moved every parameter


def test_masked_batches_take_the_autograd_path(world1):
    fast, ref = _actors([])
    batch = _batch(fast.model)
    batch["mask"][:7] = False
    got, want = fast.update(batch), ref.update(batch)
    for k in want:
        assert_close(got[k][0], want[k][0], rtol=1e-6, atol=1e-7, msg=k)
    for p, q in zip(fast.model.parameters(), ref.model.parameters(), strict=True):
        assert_close(p, q, rtol=1e-6, atol=1e-7)
