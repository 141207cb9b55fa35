"""DAPO dynamic sampling and soft overlong punishment against plain-Python loops."""

import pytest
import torch
from torch.testing import assert_close

from rlinf.algorithms.advantages import group_advantages
from rlinf.algorithms.dapo import dynamic_sampling_keep, expand_group_mask, overlong_penalty


def test_dynamic_sampling_keep_matches_loop():
    G = 4
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(40, generator=g) < 0.5).float()
    scores[:4] = 1.0  # all right
    scores[4:8] = 0.0  # all wrong
    scores[8:12] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    keep = dynamic_sampling_keep(scores, G)
    s = scores.tolist()
    expected = [len(set(s[i : i + G])) > 1 for i in range(0, len(s), G)]
    assert keep.tolist() == expected
    assert keep.dtype == torch.bool and not keep[0] and not keep[1] and keep[2]


def test_dynamic_sampling_keep_agrees_with_zero_advantage_groups():
    scores = torch.tensor([0.3, 0.3, 0.3, 1.0, 0.0, 0.5, 2.0, 2.0, 2.0])
    keep = dynamic_sampling_keep(scores, 3)
    adv = group_advantages(scores, 3).view(-1, 3)
    assert keep.tolist() == (adv.abs().sum(1) > 0).tolist() == [False, True, False]
    rows = expand_group_mask(keep, 3)
    assert rows.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    assert scores[rows].tolist() == [1.0, 0.0, 0.5]


def test_dynamic_sampling_keep_edge_cases():
    assert dynamic_sampling_keep(torch.ones(8), 4).tolist() == [False, False]
    assert dynamic_sampling_keep(torch.tensor([1, 0, 2, 2]), 2).tolist() == [True, False]
    nan_group = torch.tensor([float("nan"), 1.0, 0.0, 1.0])
    assert dynamic_sampling_keep(nan_group, 2).tolist() == [False, True]
    with pytest.raises(ValueError, match="group_size"):
        dynamic_sampling_keep(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        dynamic_sampling_keep(torch.zeros(2, 2), 2)


def ref_overlong(length, max_len, buffer, factor):
    expected_len = max_len - buffer
    if length <= expected_len:
        return 0.0
    if length > max_len:
        return -factor
    return (expected_len - length) / buffer * factor


@pytest.mark.parametrize("max_len,buffer,factor", [(20, 8, 1.0), (16, 16, 0.5), (10, 3, 2.0)])
def test_overlong_penalty_matches_loop(max_len, buffer, factor):
    lengths = torch.arange(0, max_len + 4)
    pen = overlong_penalty(lengths, max_len, buffer, factor)
    expected = [ref_overlong(n, max_len, buffer, factor) for n in lengths.tolist()]
    assert pen.dtype == torch.float32
    assert_close(pen, torch.tensor(expected))
    assert pen[max_len - buffer].item() == 0.0
    assert pen[max_len].item() == pytest.approx(-factor)
    assert torch.all(pen[1:] <= pen[:-1])  # monotone in length


def test_overlong_penalty_hard_cutoff_and_validation():
    lengths = torch.tensor([5, 10, 11])
    assert overlong_penalty(lengths, 10, 0, 1.0).tolist() == [0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(lengths, 10, 11, 1.0)
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(lengths, 10, -1, 1.0)
    with pytest.raises(ValueError, match="max_response_len"):
        overlong_penalty(lengths, 0, 0, 1.0)
    with pytest.raises(ValueError, match="penalty_factor"):
        overlong_penalty(lengths, 10, 2, -1.0)
