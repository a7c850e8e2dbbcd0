"""Ours and bare measured in interleaved rounds, in the order ours, bare, bare, ours.

This VM's speed drifts by up to half within a minute. Measured one after the other, a drift
lands on whichever side went second; in these rounds (an ABBA design) it weighs on both alike.
Both sides' processes run throughout; each round measures one side while the other idles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

ROUNDS = ("ours", "bare", "bare", "ours")


def rounds_of(side: str) -> int:
    return ROUNDS.count(side)


def share(total: int, side: str, index: int) -> int:
    """The size of `side`'s round `index`: its rounds add up to `total` exactly."""
    count = rounds_of(side)
    return total * (index + 1) // count - total * index // count


def interleave(measure: Callable[[str, int], T]) -> dict[str, list[T]]:
    """`measure(side, index)` for each round of ROUNDS, `index` counting that side's rounds."""
    measured: dict[str, list[T]] = {}
    for side in ROUNDS:
        done = measured.setdefault(side, [])
        done.append(measure(side, len(done)))
    return measured
