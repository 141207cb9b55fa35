"""MathReward: math_verify equivalences, format bonus, and robustness to adversarial outputs."""

import os
import random
import signal
import string
import subprocess
import sys
import threading
import time

import pytest

from rlinf.rewards.math import MathReward, extract_last_boxed, nesting_depth, precheck

SLOW = "\\boxed{(x+1)^{9999}-(x-1)^{9999}}"  # passes the prechecks, then expands for minutes


@pytest.fixture(scope="module")
def reward():
    with MathReward(format_score=0.1, timeout_s=1.0, num_workers=2) as r:
        yield r


def test_equivalences(reward):
    cases = [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", True),
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{2x+1}", "1+2x", True),
        ("\\boxed{1+2x}", "2x+1", True),
        ("\\boxed{10}", "10", True),
        ("\\boxed{\\dfrac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
        ("first \\boxed{3}, finally \\boxed{10}", "10", True),
        ("\\boxed{11}", "10", False),
        ("\\boxed{2x-1}", "2x+1", False),
        ("\\boxed{\\frac{1}{3}}", "0.5", False),
        ("final \\boxed{10}, no wait \\boxed{12}", "10", False),
    ]
    results = reward.score([c[0] for c in cases], [c[1] for c in cases])
    assert [r.correct for r in results] == [c[2] for c in cases]
    for r in results:
        assert r.formatted and not r.timed_out
        assert r.reward == pytest.approx((1.0 if r.correct else 0.0) + 0.1)


def test_format_bonus_and_unboxed_answer(reward):
    responses = ["The answer is 10", "10 \\boxed{", "\\boxed{7}", "\\boxed{10}"]
    results = reward.score(responses, ["10"] * 4)
    assert [(r.correct, r.formatted) for r in results] == [
        (True, False),  # no box at all: math_verify's own extraction
        (False, False),  # an unusable last box is a wrong answer
        (False, True),
        (True, True),
    ]
    assert [r.reward for r in results] == pytest.approx([1.0, 0.0, 0.1, 1.1])


def test_scores_and_length_check():
    with MathReward(correct_score=2.0, incorrect_score=-1.0, num_workers=1) as r:
        assert [x.reward for x in r.score(["\\boxed{4}", "\\boxed{5}"], ["4", "4"])] == [2.0, -1.0]
        with pytest.raises(ValueError, match="2 responses but 1 answers"):
            r.score(["a", "b"], ["1"])
    with pytest.raises(RuntimeError, match="after close"):
        r.score(["\\boxed{4}"], ["4"])


def test_string_helpers():
    assert extract_last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert extract_last_boxed("\\boxed{1} then \\boxed{2") is None
    assert extract_last_boxed("\\boxed{" + "1" * 2000 + "}", max_chars=1000) is None
    assert nesting_depth("\\frac{(a+[b])}{c}") == 3
    assert precheck("e^{-x^{2}}") is None
    assert precheck("\\frac{\\sqrt{3}}{2}") is None
    assert precheck("10!!") is None
    assert precheck("9^{9^{9^{9}}}") == "numeric power tower"
    assert precheck("10^{10^{10}}") == "numeric power tower"
    assert precheck("2^{123456}") == "exponent with more than 4 digits"
    assert precheck("((10!)!)!") == "factorial tower"
    assert precheck("123456!") == "factorial of a number with more than 4 digits"
    assert "nested" in precheck("\\frac{" * 9 + "1" + "}{2}" * 9)


def test_timeout_returns_incorrect(reward):
    start = time.monotonic()
    results = reward.score([SLOW, "\\boxed{10}"], ["10", "10"])
    assert time.monotonic() - start < 1.0 + 0.5 + 1.0
    assert results[0].timed_out and not results[0].correct and results[0].formatted
    assert results[1].correct and not results[1].timed_out


def test_unresponsive_worker_is_killed_and_does_not_block_others():
    with MathReward(timeout_s=1.0, kill_grace_s=0.5, num_workers=2) as r:
        r.score(["\\boxed{1}"] * 4, ["1"] * 4)  # both workers ready
        stuck = r.worker_pids[0]
        os.kill(stuck, signal.SIGSTOP)  # ignores the in-worker interrupt, like a hang in C code
        start = time.monotonic()
        results = r.score([f"\\boxed{{{i}}}" for i in range(40)], [str(i) for i in range(40)])
        elapsed = time.monotonic() - start
        assert results[0].timed_out and not results[0].correct
        assert all(x.correct for x in results[1:])  # the other worker kept going
        assert 1.5 <= elapsed < 4.0
        assert r.num_replaced == 1 and stuck not in r.worker_pids
        assert all(x.correct for x in r.score(["\\boxed{7}"] * 4, ["7"] * 4))


def test_crashed_worker_is_replaced():
    with MathReward(timeout_s=5.0, num_workers=2) as r:
        r.score(["\\boxed{1}"] * 4, ["1"] * 4)
        victim = r.worker_pids[0]
        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()  # dies mid-check
        start = time.monotonic()
        results = r.score([SLOW, "\\boxed{2}", "\\boxed{3}"], ["1", "2", "3"])
        assert time.monotonic() - start < 3.0  # not the 5 s timeout
        assert not results[0].correct and not results[0].timed_out
        assert results[1].correct and results[2].correct
        assert r.num_replaced == 1 and victim not in r.worker_pids
        assert r.score(["\\boxed{5}"], ["5"])[0].correct


_ALPHABET = string.ascii_letters + string.digits + " +-*/^_{}()[]\\!=.,$"
_JUNK = "".join(random.Random(1).choices(_ALPHABET, k=300_000))


def _junk(rng: random.Random, n: int) -> str:
    """n characters of random text with LaTeX-ish symbols (a window of one fixed string)."""
    start = rng.randrange(len(_JUNK) - n)
    return _JUNK[start : start + n]


def _adversarial(rng: random.Random, i: int) -> tuple[str, bool]:
    """One adversarial completion (gold answer "10") and whether it should count as correct."""
    kind = i % 12
    d = rng.randint(9, 400)
    if kind == 0:
        return "\\boxed{" + "\\frac{" * d + "1" + "}{2}" * d + "}", False
    if kind == 1:
        return _junk(rng, 100_000) + " so \\boxed{10}", True
    if kind == 2:
        return _junk(rng, 100_000), False
    if kind == 3:
        return "\\boxed{" + "{" * d + "10" + "}" * rng.randint(0, d), False
    if kind == 4:
        tower = rng.choice(["9^{9^{9^{9}}}", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}"])
        return f"The answer is \\boxed{{{tower}}}", False
    if kind == 5:
        return f"\\boxed{{(({rng.randint(5, 99)}!)!)!}}", False
    if kind == 6:
        return f"\\boxed{{{rng.randint(2, 9)}^{{{rng.randint(10**5, 10**9)}}}}}", False
    if kind == 7:
        return "}" * d + "\\boxed{}" + "{" * d + "\\boxed" * d, False
    if kind == 8:
        return "\\boxed{" + "1+" * 50_000 + "1}", False
    if kind == 9:
        return "1+" * 50_000 + "(" * 5000 + "10" + ")" * rng.randint(0, 5000), False
    if kind == 10:
        return "$" + "\\sqrt{" * d + "x" + "}" * d + "$ " * 3, False
    return "\\left(" * d + "\\boxed{10}" + "\\right)" * d, True


def test_adversarial_batch_returns_in_bounded_time():
    rng = random.Random(0)
    items = [_adversarial(rng, i) for i in range(1000)]
    responses = [text for text, _ in items] + [SLOW] * 4  # 4 real timeouts on top
    timeout_s, workers = 1.0, 2
    with MathReward(timeout_s=timeout_s, num_workers=workers) as r:
        r.score(["\\boxed{1}"], ["1"])  # workers started
        start = time.monotonic()
        results = r.score(responses, ["10"] * len(responses))
        elapsed = time.monotonic() - start
    assert len(results) == len(responses)
    assert [x.correct for x in results[:1000]] == [ok for _, ok in items]
    assert all(x.timed_out for x in results[1000:])
    assert sum(x.timed_out for x in results[:1000]) <= 20  # random junk can be slow
    # 4 timeouts over 2 workers, plus a small per-item cost for everything else.
    assert elapsed < 4 * (timeout_s + 0.5) / workers + 30.0, elapsed


def test_worker_memory_cap():
    code = (
        "from rlinf.rewards.math import _limit_memory\n"
        "_limit_memory(64)\n"
        "try:\n"
        "    bytearray(512 * 2**20)\n"
        "except MemoryError:\n"
        "    print('capped')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "capped"
