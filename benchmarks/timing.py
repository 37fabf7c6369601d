"""What the benchmark scripts share: timing a function the least disturbed of several times."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(repeats: int, function: Callable[[], object]) -> float:
    """Smallest wall time of `repeats` calls: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def best_of_interleaved(repeats: int, functions: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Smallest wall time of each function over `repeats` rounds that call them in turn.

    Alternating puts the machine's slow spells on every function alike, so ratios between them are
    steadier than when each is timed in its own block (on the shared 2-core VM, the backbone floor
    timed in a separate process varied 3.4-7.5 ms per image from run to run).
    """
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best
