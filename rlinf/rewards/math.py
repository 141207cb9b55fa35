"""Verifiable math reward: ``math_verify`` equivalence checks in killable worker processes.

A policy under RL will, sooner or later, emit answers that make a symbolic checker hang
(``9^{9^{9^{9}}}``), blow up memory, or recurse forever (``\\frac{\\frac{...}}``). So:

1. The parent process does cheap string work only: it finds the last ``\\boxed{...}``
   answer, truncates, and fast-rejects answers whose checking would explode (deep bracket
   nesting, power and factorial towers, huge exponents). See :func:`precheck`.
2. Everything else runs in a small pool of worker processes, one check at a time each.
   A check is interrupted inside its worker after ``timeout_s`` (the worker survives);
   a worker stuck in C code that ignores the interrupt is killed after
   ``timeout_s + kill_grace_s`` and replaced, and so is one that crashes (segfault,
   out of memory). Either way the caller gets an incorrect result, never a hang.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing as mp
import re
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

logger = logging.getLogger(__name__)

_INSTALL_HINT = "math_verify is needed for MathReward: pip install math-verify"
_BRACKET = re.compile(r"[{}()\[\]]")
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_LETTER = re.compile(r"[a-zA-Z]")
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RewardResult:
    """The reward of one response and why: correct answer, boxed format, checker timeout."""

    reward: float
    correct: bool
    formatted: bool
    timed_out: bool


# ---------------------------------------------------------------------------------------------
# Cheap string-level work (parent process)
# ---------------------------------------------------------------------------------------------


def _closing_brace(text: str, open_pos: int, limit: int) -> int | None:
    """Index of the ``}`` matching the ``{`` at ``open_pos``, scanning at most ``limit`` chars."""
    depth = 0
    end = min(len(text), open_pos + limit + 2)
    for i in range(open_pos, end):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def extract_last_boxed(text: str, max_chars: int = 1000) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, or None.

    None also when that last box is unbalanced or longer than ``max_chars``: such a
    box is not a usable answer. Cost is bounded by ``max_chars``, not ``len(text)``
    (beyond one ``rfind``).
    """
    pos = text.rfind("\\boxed")
    if pos < 0:
        return None
    i = pos + len("\\boxed")
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    close = _closing_brace(text, i, max_chars)
    if close is None:
        return None
    return text[i + 1 : close]


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``{}``, ``()`` and ``[]`` in ``text`` (all kinds counted together)."""
    depth = best = 0
    for ch in _BRACKET.findall(text):
        if ch in "{([":
            depth += 1
            best = max(best, depth)
        else:
            depth = max(depth - 1, 0)
    return best


def _bracket_pairs(text: str) -> dict[int, int]:
    """Position of each matched bracket's partner (both directions), in one linear pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACKET.finditer(text):
        i = match.start()
        if text[i] in "{([":
            stack.append(i)
        elif stack:
            j = stack.pop()
            pairs[i], pairs[j] = j, i
    return pairs


def _group_after(text: str, i: int, pairs: dict[int, int]) -> str:
    """The operand that starts at ``i``: a braced group, a LaTeX command, or one character."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return ""
    if text[i] == "{":
        return text[i + 1 : pairs.get(i, len(text))]
    match = _LATEX_COMMAND.match(text, i)
    return match.group(0) if match else text[i]


def _group_before(text: str, i: int, pairs: dict[int, int]) -> str:
    """The operand that ends just before ``i``: a bracketed group or a run of digits."""
    j = i - 1
    while j >= 0 and text[j] == " ":
        j -= 1
    if j < 0:
        return ""
    if text[j] in ")}]":
        return text[pairs[j] + 1 : j] if j in pairs else ""
    k = j
    while k >= 0 and text[k].isdigit():
        k -= 1
    return text[k + 1 : j + 1]


def _is_numeric(group: str) -> bool:
    """True when ``group`` has no variable letters (LaTeX commands such as ``\\cdot`` aside)."""
    return _LETTER.search(_LATEX_COMMAND.sub("", group)) is None


def _huge_literal(group: str, max_digits: int) -> bool:
    digits = group.strip(" {}()-+")
    return digits.isdigit() and len(digits.lstrip("0")) > max_digits


def precheck(answer: str, max_chars: int = 1000, max_nesting: int = 8) -> str | None:
    """Why checking ``answer`` would be hopeless or explosive, or None when it is fine.

    Rejected: answers longer than ``max_chars``; bracket nesting deeper than
    ``max_nesting`` (the LaTeX parser is exponential in it); numeric power towers
    (an exponent that holds a ``^`` or ``!`` and no variable, as in ``10^{10^{10}}``);
    factorial towers (``((10!)!)!``); exponents or factorial arguments of 5+ digits.
    Symbolic towers such as ``e^{-x^{2}}`` pass. Pure string work, linear in ``answer``.
    """
    if len(answer) > max_chars:
        return f"longer than {max_chars} characters"
    if nesting_depth(answer) > max_nesting:
        return f"brackets nested deeper than {max_nesting}"
    pairs = _bracket_pairs(answer)
    start = 0
    while (i := answer.find("^", start)) >= 0:
        start = i + 1
        exponent = _group_after(answer, i + 1, pairs)
        if ("^" in exponent or "!" in exponent) and _is_numeric(exponent):
            return "numeric power tower"
        if _huge_literal(exponent, 4):
            return "exponent with more than 4 digits"
    start = 0
    while (i := answer.find("!", start)) >= 0:
        start = i + 1
        if i + 1 < len(answer) and answer[i + 1] == "!":
            start = i + 2  # a double factorial n!! is one operator
        operand = _group_before(answer, i, pairs)
        if "!" in operand:
            return "factorial tower"
        if _huge_literal(operand, 4):
            return "factorial of a number with more than 4 digits"
    return None


# ---------------------------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------------------------


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so math_verify does not swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _SoftTimeout


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = (LatexExtractionConfig(), ExprExtractionConfig())
    parsed = parse("\\boxed{" + gold + "}", extraction_config=configs, parsing_timeout=None)
    return parsed or parse(gold, extraction_config=configs, parsing_timeout=None)


def _check(pred: str, gold: str) -> bool:
    """math_verify equivalence of a prediction text against a gold answer (no timeout)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = parse(pred, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _limit_memory(extra_mb: int) -> None:
    """Cap this process's address space at its current size plus ``extra_mb``.

    Relative to the current size because the worker inherits whatever its parent
    imported (torch maps gigabytes of address space without using them).
    """
    import resource

    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return  # not Linux: no cap
    limit = current + extra_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(conn: Connection, soft_timeout_s: float, memory_limit_mb: int | None) -> None:
    """Serve ``(index, prediction, gold)`` checks on ``conn`` until it closes or gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    if memory_limit_mb is not None:
        _limit_memory(memory_limit_mb)
    try:
        import math_verify.grader
        import math_verify.parser

        # Timeouts are ours (SIGALRM below, plus the parent's kill), so math_verify's own
        # alarm-based ones stay off; silence its one-time warning about that.
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _check("\\boxed{\\frac{1}{2}}", "0.5")  # warm the LaTeX parser before taking work
    except BaseException as exc:  # noqa: BLE001 - report any start failure to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, pred, gold = msg
        correct = timed_out = False
        try:
            signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
            try:
                correct = _check(pred, gold)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            timed_out = True
        except BaseException:  # noqa: BLE001 - MemoryError, RecursionError, parser bugs
            correct = False
        conn.send(("result", index, correct, timed_out))


# ---------------------------------------------------------------------------------------------
# Pool and reward
# ---------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    task: int | None = None
    deadline: float = 0.0


class MathReward:
    """Scores responses against gold answers with ``math_verify``; safe against adversarial text.

    reward = (correct_score if correct else incorrect_score) + (format_score if the
    response has a balanced ``\\boxed{...}`` answer). The boxed answer is what gets
    checked (an unbalanced or overlong last box counts as a wrong answer); a response
    with no ``\\boxed`` at all is checked on its last ``max_tail_chars`` characters with
    math_verify's own extraction (last LaTeX or plain expression).

    Args:
        correct_score / incorrect_score / format_score: the reward terms above.
        timeout_s: budget of one check; past it the check counts as incorrect and timed out.
        num_workers: checker processes (each runs one check at a time).
        kill_grace_s: extra wait, after ``timeout_s``, before a worker that ignores the
            interrupt (stuck in C code) is killed and replaced.
        max_answer_chars / max_tail_chars / max_nesting: fast-reject limits, see
            :func:`precheck`.
        memory_limit_mb: how much address space each worker may add to its start-up size
            (None: no limit), so that a huge number fails with MemoryError instead of
            swapping the node.
    """

    def __init__(
        self,
        correct_score: float = 1.0,
        incorrect_score: float = 0.0,
        format_score: float = 0.0,
        timeout_s: float = 2.0,
        num_workers: int = 2,
        kill_grace_s: float = 0.5,
        max_answer_chars: int = 1000,
        max_tail_chars: int = 1000,
        max_nesting: int = 8,
        memory_limit_mb: int | None = 2048,
    ) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError(_INSTALL_HINT)
        if timeout_s <= 0:
            raise ValueError(f"reward.timeout_s must be > 0, got {timeout_s}")
        if num_workers < 1:
            raise ValueError(f"reward.num_workers must be >= 1, got {num_workers}")
        self.correct_score = correct_score
        self.incorrect_score = incorrect_score
        self.format_score = format_score
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        self.max_answer_chars = max_answer_chars
        self.max_tail_chars = max_tail_chars
        self.max_nesting = max_nesting
        self.memory_limit_mb = memory_limit_mb
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self._ctx.get_start_method() == "forkserver":
            # Only takes effect if the fork server is not running yet; then replacing a
            # killed worker costs a fork, not a fresh interpreter importing sympy.
            self._ctx.set_forkserver_preload(["__main__", "math_verify", __name__])
        self.num_replaced = 0
        self._failed_starts = 0
        self._closed = False
        self._workers: list[_Worker] = []
        for _ in range(num_workers):
            self._workers.append(self._start_worker())
        self._run(deque(), [], [], until_ready=True)  # start-up errors surface here

    # -- pool management ------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self.timeout_s, self.memory_limit_mb),
            name="rlinf-math-reward",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process=process, conn=parent_conn, started=time.monotonic())

    def _replace(self, slot: int) -> None:
        worker = self._workers[slot]
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()
        self._workers[slot] = self._start_worker()
        self.num_replaced += 1

    @property
    def worker_pids(self) -> list[int | None]:
        """Process ids of the current workers (they change when a worker is replaced)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop all workers. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5.0)
            worker.conn.close()

    def __enter__(self) -> MathReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- scoring ----------------------------------------------------------------------------

    def _prediction(self, response: str) -> tuple[str | None, bool]:
        """(text to check, or None when fast-rejected; whether a boxed answer is present).

        The last ``\\boxed`` is the answer; when it is unusable (unbalanced, overlong) the
        response is incorrect. Only a response with no ``\\boxed`` at all is checked on its
        tail, where math_verify picks the last expression.
        """
        boxed = extract_last_boxed(response, self.max_answer_chars)
        if boxed is not None:
            candidate, pred = boxed, "\\boxed{" + boxed + "}"
        elif "\\boxed" in response:
            logger.debug("math reward: fast reject (unusable \\boxed answer)")
            return None, False
        else:
            candidate = pred = response[-self.max_tail_chars :]
        reason = precheck(candidate, max_chars=self.max_tail_chars, max_nesting=self.max_nesting)
        if reason is not None:
            logger.debug("math reward: fast reject (%s)", reason)
            return None, boxed is not None
        return pred, boxed is not None

    def score(self, responses: list[str], answers: list[str]) -> list[RewardResult]:
        """One :class:`RewardResult` per (response, gold answer) pair, in order."""
        if self._closed:
            raise RuntimeError("MathReward.score called after close()")
        if len(responses) != len(answers):
            raise ValueError(
                f"MathReward.score: {len(responses)} responses but {len(answers)} answers"
            )
        correct = [False] * len(responses)
        timed_out = [False] * len(responses)
        formatted = [False] * len(responses)
        todo: deque[tuple[int, str, str]] = deque()
        for i, (response, answer) in enumerate(zip(responses, answers)):
            pred, formatted[i] = self._prediction(response)
            if pred is not None:
                todo.append((i, pred, str(answer)))
        self._run(todo, correct, timed_out)
        return [
            RewardResult(
                reward=(self.correct_score if correct[i] else self.incorrect_score)
                + (self.format_score if formatted[i] else 0.0),
                correct=correct[i],
                formatted=formatted[i],
                timed_out=timed_out[i],
            )
            for i in range(len(responses))
        ]

    def _run(
        self, todo: deque, correct: list[bool], timed_out: list[bool], until_ready: bool = False
    ) -> None:
        """Feed ``todo`` to the workers; fill ``correct``/``timed_out`` as results come in.

        Returns when all is done and, with ``until_ready``, every worker has started.
        """
        hard_timeout = self.timeout_s + self.kill_grace_s
        while (
            todo
            or any(w.task is not None for w in self._workers)
            or (until_ready and not all(w.ready for w in self._workers))
        ):
            now = time.monotonic()
            for worker in self._workers:
                if worker.ready and worker.task is None and todo and worker.process.is_alive():
                    index, pred, gold = todo.popleft()
                    worker.task, worker.deadline = index, now + hard_timeout
                    try:
                        worker.conn.send((index, pred, gold))
                    except OSError:
                        pass  # a dead worker: its sentinel fires below
            deadlines = [w.deadline for w in self._workers if w.task is not None]
            deadlines += [w.started + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
            handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
            fired = set(wait(handles, timeout=max(0.0, min(deadlines) - now)))
            now = time.monotonic()
            for slot, worker in enumerate(self._workers):
                dead = worker.process.sentinel in fired
                if worker.conn in fired:
                    try:
                        self._handle(worker, worker.conn.recv(), correct, timed_out)
                    except (EOFError, OSError):
                        dead = True
                if worker.task is not None and (dead or now >= worker.deadline):
                    logger.warning(
                        "math reward: worker %s %s; replacing it",
                        worker.process.pid,
                        "died mid-check" if dead else f"exceeded {hard_timeout:.1f}s",
                    )
                    timed_out[worker.task] = not dead
                    self._replace(slot)
                elif dead:
                    self._failed_starts += not worker.ready
                    if self._failed_starts > 3:
                        self.close()
                        raise RuntimeError("math reward workers keep dying during start-up")
                    self._replace(slot)
                elif not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                    self.close()
                    raise RuntimeError(
                        f"math reward worker did not start within {_STARTUP_TIMEOUT_S:.0f}s"
                    )

    def _handle(
        self, worker: _Worker, msg: tuple, correct: list[bool], timed_out: list[bool]
    ) -> None:
        """Apply one message from a worker."""
        if msg[0] == "ready":
            worker.ready = True
            self._failed_starts = 0
        elif msg[0] == "error":
            self.close()
            raise RuntimeError(f"math reward worker failed to start: {msg[1]}")
        elif msg[0] == "result" and msg[1] == worker.task:
            _, index, correct[index], timed_out[index] = msg
            worker.task = None
