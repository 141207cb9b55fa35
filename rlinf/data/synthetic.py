"""Synthetic arithmetic problems for the CPU reasoning demo: "What is 23 + 48?" -> 71.

Sized for a tiny transformer (0.5-2M parameters): operands of one or two digits, short
prompts (< 32 tokens even with a chat template) and short solutions (``\\boxed{71}``).
Such a model learns part of it in a short supervised warm-start, which leaves room for
GRPO to raise held-out accuracy. Train and val problems are disjoint.

CLI: ``python -m rlinf.data.synthetic --out DIR --n-train N --n-val M --seed S``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "max": max,  # "Which is larger, 37 or 52?": a comparison a tiny model can learn in general
    "min": min,
}
_WORDED = {"max": "Which is larger, {a} or {b}?", "min": "Which is smaller, {a} or {b}?"}


def _operand(rng: random.Random, max_digits: int) -> int:
    """A number of 1..max_digits digits, each digit count equally likely (mixes difficulty)."""
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def arithmetic_problem(a: int, op: str, b: int) -> dict[str, str]:
    """One row: ``prompt``, ``answer`` (the number as text) and ``solution`` (boxed answer)."""
    answer = str(OPS[op](a, b))
    prompt = _WORDED[op].format(a=a, b=b) if op in _WORDED else f"What is {a} {op} {b}?"
    return {
        "prompt": prompt,
        "answer": answer,
        "solution": f"\\boxed{{{answer}}}",
    }


def arithmetic_problems(
    n: int,
    seed: int,
    ops: Sequence[str] = ("+", "-"),
    max_digits: int = 2,
) -> list[dict[str, str]]:
    """``n`` distinct problems; subtraction keeps the result non-negative."""
    bad = [op for op in ops if op not in OPS]
    if bad or not ops:
        raise ValueError(f"ops must be a non-empty subset of {sorted(OPS)}, got {list(ops)}")
    space = len(ops) * (10**max_digits) ** 2
    if n > space // 2:
        raise ValueError(
            f"{n} distinct problems asked for, but {list(ops)} with up to {max_digits} digits "
            f"give about {space}; allow more digits or ops, or ask for fewer"
        )
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    rows = []
    while len(rows) < n:
        a, b, op = _operand(rng, max_digits), _operand(rng, max_digits), rng.choice(list(ops))
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) not in seen:
            seen.add((a, op, b))
            rows.append(arithmetic_problem(a, op, b))
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_arithmetic_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int = 0,
    ops: Sequence[str] = ("+", "-"),
    max_digits: int = 2,
) -> tuple[Path, Path]:
    """Write disjoint ``train.jsonl`` and ``val.jsonl`` to ``out_dir``; return their paths."""
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got {n_train} and {n_val}")
    rows = arithmetic_problems(n_train + n_val, seed, ops, max_digits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.jsonl", out / "val.jsonl"
    _write_jsonl(train, rows[:n_train])
    _write_jsonl(val, rows[n_train:])
    logger.info("wrote %d train and %d val problems to %s", n_train, n_val, out)
    return train, val


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", default="+-", help="operators to use, e.g. '+-' or '+-*'")
    parser.add_argument("--max-digits", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_arithmetic_dataset(
            args.out, args.n_train, args.n_val, args.seed, tuple(args.ops), args.max_digits
        )
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
