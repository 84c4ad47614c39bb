"""When the speaker's device queue is too short for this machine: a pure policy, fed the running count of
output underflows heard while audio played, answering with the longer latency to reopen the speaker at."""

from __future__ import annotations

from collections import deque


class UnderflowGuard:
    """When to lengthen the output device queue: ``limit`` underflows heard (while reply audio or an earcon was
    playing) within ``window_s`` mean the callbacks come too late for this machine at this latency, so the next
    latency is double the current one, up to ``max_latency_s``. Pure: time comes in as ``now_s``."""

    def __init__(self, latency_s: float, *, limit: int = 3, window_s: float = 60.0,
                 max_latency_s: float = 0.1) -> None:
        self.latency_s = latency_s
        self.limit = limit
        self.window_s = window_s
        self.max_latency_s = max(max_latency_s, latency_s)
        self._seen_total = 0
        self._times: deque[float] = deque()
        self._given_up = False

    def observe(self, now_s: float, underflows_total: int) -> float | None:
        """Feed the adapter's running count of heard underflows; returns the latency to reopen at, or None."""
        new = underflows_total - self._seen_total
        self._seen_total = underflows_total
        self._times.extend([now_s] * max(new, 0))
        while self._times and now_s - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit or self._given_up or self.latency_s >= self.max_latency_s:
            return None
        return min(2 * self.latency_s, self.max_latency_s)

    def raised(self, latency_s: float) -> int:
        """The device now runs at ``latency_s``; returns the underflows that led to it and starts counting anew."""
        count = len(self._times)
        self.latency_s = latency_s
        self._times.clear()
        return count

    def give_up(self) -> None:
        """The device refused a longer queue or granted none: ask no more; gaps now only count towards at_limit."""
        self._given_up = True

    @property
    def at_limit(self) -> bool:
        """The latency cannot be raised further and underflows keep coming."""
        return (self._given_up or self.latency_s >= self.max_latency_s) and len(self._times) >= self.limit
