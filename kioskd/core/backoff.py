"""The reconnect policy, as a pure iterator of delays.

A random first delay under ``first_max_s`` (so a fleet that lost one server does not come back in lock-step),
then doubling with jitter up to ``cap_s``. The caller restarts the iterator after a healthy period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def delays(
    *, first_max_s: float = 1.0, factor: float = 2.0, cap_s: float = 30.0, rand: Callable[[], float]
) -> Iterator[float]:
    """Yield reconnect delays in seconds, forever. ``rand()`` returns a float in [0, 1)."""
    yield first_max_s * rand()
    base_s = first_max_s
    while True:
        base_s = min(base_s * factor, cap_s)
        yield base_s * (0.75 + 0.25 * rand())
