"""Bounds on what a server can make kioskd write: the size of every field, and the rate of each kind of line.

Theory of operation. A server decides how often kioskd notes a server error, a bad frame or an unknown event, and
what text those notes carry. Two bounds, applied in one place (``Kiosk``, to every action list the core returns):

- ``cut``: every field of every note is at most ``FIELD_MAX_CHARS`` characters. A longer string keeps its head and
  says how much was cut; an object (a dict, a list) whose JSON is longer becomes that JSON, cut the same way.
- ``NoteLimiter``: the notes a server can cause at will (``SERVER_NOTES``) pass, per (name, level), ``BURST`` at
  once and then one per ``REFILL_S`` (a token bucket); the rest are held back and counted. ``SUMMARY_S`` after the
  first one held back, one ``log.suppressed`` note per (name, level) says how many, at that level, and the
  counting starts again. Notes kioskd causes itself (phases, turns, reconnects paced by the backoff) are never held.

Pure: time comes in as ``now``; the summary's timer leaves as ``Arm(Timer.LOG_SUMMARY)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from kioskd.core import events as ev

#: a few hundred characters: a server's message or object is read, not archived
FIELD_MAX_CHARS: Final = 500
#: notes whose rate a server sets (it sends the frames that cause them), limited per (name, level)
SERVER_NOTES: Final = frozenset({
    "ws.server_error", "ws.bad_event", "ws.unknown_event", "ws.session_mismatch", "ws.session_created",
    "ws.clock_skew", "ws.ignored", "turn.ignored", "turn.late_delta",
})
BURST: Final = 5
#: after a burst, one more line per (name, level) this often
REFILL_S: Final = 60.0
#: how long after the first note held back its count is said
SUMMARY_S: Final = 60.0


def cut(value: Any, limit: int = FIELD_MAX_CHARS) -> Any:
    """``value`` if it is a number, None, or at most ``limit`` characters (as JSON, for objects); else its first
    ``limit`` characters and how many more there were."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}… (+{len(value) - limit} chars)"
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return value if len(text) <= limit else cut(text, limit)


def cut_note(note: ev.Note) -> ev.Note:
    """The note with every field cut (the same note when nothing needed cutting)."""
    fields = {key: cut(value) for key, value in note.fields.items()}
    if all(fields[key] is value for key, value in note.fields.items()):
        return note
    return ev.Note(note.name, note.level, fields)


@dataclass
class _Bucket:
    tokens: float
    at_s: float
    held: int = 0
    held_since_s: float = 0.0


class NoteLimiter:
    """Holds back server-caused notes over the rate; ``limit`` filters an action list, ``summary`` (on
    ``Timeout(LOG_SUMMARY)``) says what was held back."""

    def __init__(self, names: frozenset[str] = SERVER_NOTES, *, burst: int = BURST, refill_s: float = REFILL_S,
                 summary_s: float = SUMMARY_S) -> None:
        self._names = names
        self._burst = burst
        self._refill_s = refill_s
        self._summary_s = summary_s
        self._buckets: dict[tuple[str, ev.Level], _Bucket] = {}  # at most len(names) x 4 levels
        self._due_s: float | None = None

    def limit(self, actions: list[ev.Action], now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        for action in actions:
            if isinstance(action, ev.Note) and action.name in self._names and not self._take(action, now):
                continue
            out.append(action)
        if self._due_s is None and any(b.held for b in self._buckets.values()):
            self._due_s = now + self._summary_s
            out.append(ev.Arm(ev.Timer.LOG_SUMMARY, self._due_s))
        return out

    def summary(self, now: float) -> list[ev.Action]:
        """One ``log.suppressed`` per (name, level) held back since the last summary."""
        self._due_s = None
        out: list[ev.Action] = []
        for (name, level), bucket in self._buckets.items():
            if bucket.held:
                out.append(ev.Note("log.suppressed", level, {
                    "name": name, "count": bucket.held, "over_s": round(now - bucket.held_since_s, 1)}))
                bucket.held = 0
        return out

    def _take(self, note: ev.Note, now: float) -> bool:
        bucket = self._buckets.get((note.name, note.level))
        if bucket is None:
            bucket = self._buckets[(note.name, note.level)] = _Bucket(float(self._burst), now)
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at_s) / self._refill_s)
        bucket.at_s = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        if not bucket.held:
            bucket.held_since_s = now
        bucket.held += 1
        return False
