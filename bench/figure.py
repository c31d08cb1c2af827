"""What every benchmark reports: dripmail beside the peer a user would write and the limit.

A comparison figure is built with `compare`: the same work done three ways in the same run
(the machines are shared and noisy, so only same-run ratios are quoted):

- ``ours``: dripmail's way;
- ``peer``: the way a user would really write it without dripmail's care (``peer_is`` says
  what it is and why a user would write it that way);
- ``limit``: the cheapest way to do the same work in Python on the same inputs (``limit_is``
  says what it is), so the figure shows how much is left to gain.

`rates` times several ways in interleaved rounds and keeps each one's median, so a burst of
load from a neighbour hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Literal

Better = Literal["higher", "lower"]


def compare(
    name: str,
    unit: str,
    ours: float,
    *,
    peer: float,
    peer_is: str,
    limit: float | None = None,
    limit_is: str = "",
    better: Better = "higher",
) -> dict:
    """A comparison figure; ratios are "times better than the peer" and "share of the limit".

    `better` says which way is good for `unit` (messages/s: higher; seconds: lower), so
    ``vs_peer`` > 1 always means dripmail beats the peer and ``of_limit`` is at most about 1.
    """

    def times(a: float, b: float) -> float:
        if better == "higher":
            return a / b if b else float("inf")
        return b / a if a else float("inf")

    figure = {
        "name": name,
        "unit": unit,
        "better": better,
        "ours": ours,
        "peer": peer,
        "peer_is": peer_is,
        "vs_peer": times(ours, peer),
        # The names older readers of results.json know.
        "naive": peer,
        "ratio": times(ours, peer),
    }
    if limit is not None:
        figure |= {"limit": limit, "limit_is": limit_is, "of_limit": times(ours, limit)}
    return figure


def value(name: str, unit: str, amount: float, note: str = "") -> dict:
    """A plain measurement (a size, a time) with no comparison."""
    figure: dict = {"name": name, "unit": unit, "value": amount}
    if note:
        figure["note"] = note
    return figure


def medians(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each way's own measurement (a callable doing one round and returning, say, its
    seconds or its rate): median over `rounds` interleaved rounds, so a burst of load from a
    neighbour hits every way alike."""
    seen: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            seen[name].append(way())
    return {name: statistics.median(values) for name, values in seen.items()}


def rates(ways: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    """Items per second of each way (wall time): median over `rounds` interleaved rounds.

    Each way is a callable doing one round of work and returning how many items it did.
    """

    def timed(way: Callable[[], int]) -> Callable[[], float]:
        def rate() -> float:
            started = time.perf_counter()
            done = way()
            return done / (time.perf_counter() - started)

        return rate

    return medians({name: timed(way) for name, way in ways.items()}, rounds)
