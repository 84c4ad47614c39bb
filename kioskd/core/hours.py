"""Opening hours: a weekly schedule with dated exceptions, answered for a local date and time. Pure: the time
comes in as a ``datetime`` (the adapter reads the clock and the time zone).

The schedule is what a museum publishes: per weekday a list of ``"HH:MM-HH:MM"`` ranges (none: closed), and
exceptions by date (``2026-12-25``: closed, or other ranges), each with an optional note ("Christmas Day").
The tool's answer gives the model the local date and time, whether the museum is open now, today's hours, the
next opening when closed, and the coming week, so "are you open on Sunday" and "when do you close" are both
answerable from one call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final

WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
RANGE: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
#: how far ahead the next opening is looked for
LOOKAHEAD_DAYS: Final = 14


@dataclass(frozen=True)
class Span:
    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Day:
    spans: tuple[Span, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Hours:
    weekly: tuple[Day, ...]  # Monday first, 7 days
    exceptions: dict[date, Day] = field(default_factory=dict)

    def day(self, on: date) -> Day:
        return self.exceptions.get(on) or self.weekly[on.weekday()]

    def answer(self, now: datetime) -> dict[str, Any]:
        """What the ``opening_hours`` tool returns at local time ``now``."""
        today = self.day(now.date())
        open_span = next((s for s in today.spans if s.start <= now.time() < s.end), None)
        out: dict[str, Any] = {
            "local_time": f"{now:%A %Y-%m-%d %H:%M}",
            "open_now": open_span is not None,
            "today": describe(today),
        }
        if open_span is not None:
            out["closes_at"] = f"{open_span.end:%H:%M}"
        else:
            out["next_opening"] = self._next_opening(now)
        out["week"] = {f"{d:%A %Y-%m-%d}": describe(self.day(d))
                       for d in (now.date() + timedelta(days=i) for i in range(7))}
        return out

    def _next_opening(self, now: datetime) -> str | None:
        for offset in range(LOOKAHEAD_DAYS + 1):
            on = now.date() + timedelta(days=offset)
            for span in self.day(on).spans:
                if offset > 0 or span.start > now.time():
                    return f"{on:%A %Y-%m-%d} {span.start:%H:%M}"
        return None


def describe(day: Day) -> str:
    text = ", ".join(str(s) for s in day.spans) if day.spans else "closed"
    return f"{text} ({day.note})" if day.note else text


def parse_spans(text: str) -> tuple[Span, ...]:
    """``"10:00-13:00, 14:00-18:00"`` or ``"closed"``; raises ValueError saying what is wrong."""
    if text.strip().lower() in ("closed", ""):
        return ()
    spans = []
    for part in text.split(","):
        match = RANGE.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a range like 10:00-18:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"{part.strip()!r} is not a time of day")
        start, end = time(h1, m1), time(23, 59, 59) if h2 == 24 else time(h2, m2)
        if end <= start:
            raise ValueError(f"{part.strip()!r} ends before it starts")
        spans.append(Span(start, end))
    spans.sort(key=lambda s: s.start)
    for a, b in zip(spans, spans[1:]):
        if b.start < a.end:
            raise ValueError(f"{a} and {b} overlap")
    return tuple(spans)
