"""The direct fused Adam/AdamW step equals torch.optim's step, also across a state reload."""

import copy

import pytest
import torch

from rlinf.train.optim import direct_fused_step


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _backward(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_same_parameters_and_state_as_torch_step(cls):
    ref, ours = _model(), _model()
    kw = dict(lr=1e-2, eps=1e-5, weight_decay=0.01, fused=True)
    o_ref, o_ours = cls(ref.parameters(), **kw), cls(ours.parameters(), **kw)
    sched = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1 - i / 20) for o in (o_ref, o_ours)]
    step = direct_fused_step(o_ours)
    assert step is not None
    for i in range(12):
        x = torch.randn(4, 5)
        _backward(ref, x)
        _backward(ours, x)
        o_ref.step()
        step()
        for s in sched:
            s.step()
        if i == 5:  # a resume: the state and groups are replaced by a reload
            o_ours.load_state_dict(copy.deepcopy(o_ours.state_dict()))
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)
    for p_ref, p_ours in zip(ref.parameters(), ours.parameters(), strict=True):
        s_ref, s_ours = o_ref.state[p_ref], o_ours.state[p_ours]
        assert float(s_ref["step"]) == float(s_ours["step"]) == 12
        assert torch.equal(s_ref["exp_avg_sq"], s_ours["exp_avg_sq"])


def test_not_offered_where_it_does_not_apply():
    m = _model()
    assert direct_fused_step(torch.optim.Adam(m.parameters())) is None  # not fused
    assert direct_fused_step(torch.optim.Adam(m.parameters(), fused=True, amsgrad=True)) is None
    assert direct_fused_step(torch.optim.SGD(m.parameters(), lr=0.1)) is None
    groups = [{"params": [m[0].weight]}, {"params": [m[2].weight], "lr": 1e-4}]
    assert direct_fused_step(torch.optim.Adam(groups, fused=True)) is None
