"""A sliding-window limit: at most ``limit`` events in any ``window_s``. Pure: time comes in as ``now``.

Used where a visitor (or a jammed or hostile input) could make kioskd do something again and again: each refused
event is counted, and the first refusal of a run of them (an episode) is what gets said.
"""

from __future__ import annotations

from collections import deque


class Burst:
    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()
        self.refused = 0  # refusals in the current episode (0: none under way)

    def allow(self, now: float) -> bool:
        """Whether an event at ``now`` is within the limit (it is then counted); a refusal adds to ``refused``."""
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            self.refused += 1
            return False
        self._times.append(now)
        return True

    def end_episode(self) -> int:
        """The refusals of the episode that an allowed event just ended (0 if none), counting afresh."""
        refused, self.refused = self.refused, 0
        return refused
