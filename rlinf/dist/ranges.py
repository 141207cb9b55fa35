"""Rank-range syntax shared by placements and node groups: `3`, `0-3`, `0-1,4`, `all`, [0, 2]."""

from __future__ import annotations

from typing import Any


class RangeError(ValueError):
    """A range that does not parse or does not fit; the message says what would be valid."""

    def __init__(self, message: str, out_of_range: int | None = None):
        super().__init__(message)
        self.out_of_range = out_of_range


def describe(ranks: list[int]) -> str:
    """Compact text for a sorted rank list: [0,1,2,5] -> '0-2,5'."""
    if not ranks:
        return "none"
    parts, start, prev = [], ranks[0], ranks[0]
    for r in ranks[1:] + [None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ",".join(parts)


def parse_range(spec: Any, upper: int, what: str = "rank") -> list[int]:
    """Parse one range spec into sorted unique ints in [0, upper); `all` is every one of them."""
    if isinstance(spec, bool):
        raise RangeError(f"expected a {what} range such as 0-3 or all, got {spec!r}")
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, (list, tuple)):
        items = []
        for s in spec:
            items.extend(parse_range(s, upper, what))
    elif isinstance(spec, str):
        text = spec.strip()
        if text == "all":
            if upper <= 0:
                raise RangeError(f"'all' selects no {what}: there are none")
            return list(range(upper))
        items = []
        for part in text.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo_s, hi_s = part.split("-", 1)
                    lo, hi = int(lo_s), int(hi_s)
                    if hi < lo:
                        raise RangeError(
                            f"range '{part}' is empty (end before start); write {hi}-{lo}"
                        )
                    items.extend(range(lo, hi + 1))
                else:
                    items.append(int(part))
            except RangeError:
                raise
            except ValueError:
                raise RangeError(
                    f"'{spec}' is not a {what} range; write e.g. 3, 0-3, 0-1,4 or all"
                ) from None
    else:
        raise RangeError(f"expected a {what} range such as 0-3 or all, got {spec!r}")
    bad = [i for i in items if i < 0 or i >= upper]
    if bad:
        valid = f"0-{upper - 1}" if upper > 0 else "none"
        raise RangeError(f"{what} {bad[0]} is out of range (valid: {valid})", out_of_range=bad[0])
    if len(set(items)) != len(items):
        dup = next(i for i in items if items.count(i) > 1)
        raise RangeError(f"{what} {dup} is listed twice")
    return sorted(items)
