"""Ours and bare measured in interleaved rounds, by default in the order ours, bare, bare, ours.

This VM's speed drifts by up to half within a minute. Measured one after the other, a drift
lands on whichever side went second; in these rounds (an ABBA design) it weighs on both alike.
Both sides' processes run throughout; each round measures one side while the other idles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

ROUNDS = ("ours", "bare", "bare", "ours")


def rounds_of(side: str, rounds: Sequence[str] = ROUNDS) -> int:
    return list(rounds).count(side)


def share(total: int, side: str, index: int, rounds: Sequence[str] = ROUNDS) -> int:
    """The size of `side`'s round `index`: its rounds add up to `total` exactly."""
    count = rounds_of(side, rounds)
    return total * (index + 1) // count - total * index // count


def interleave(measure: Callable[[str, int], T], rounds: Sequence[str] = ROUNDS) -> dict[str, list[T]]:
    """`measure(side, index)` for each round of `rounds`, `index` counting that side's rounds."""
    measured: dict[str, list[T]] = {}
    for side in rounds:
        done = measured.setdefault(side, [])
        done.append(measure(side, len(done)))
    return measured
