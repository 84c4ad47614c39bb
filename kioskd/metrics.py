"""Sinks for the core's ``Note`` observations: the log line is one sink, the status counters another (and
Prometheus, later, a third). The sinks live as long as the process, so nothing counted dies with a machine that
a kioskd bug replaced."""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from kioskd import log as log_mod
from kioskd.core.events import Note
from kioskd.core.ledger import add_usage


class Sink(Protocol):
    def note(self, note: Note) -> None: ...


class LogSink:
    """Each note as one log line (``log.emit``)."""

    def __init__(self, logger: log_mod.Logger) -> None:
        self._log = logger

    def note(self, note: Note) -> None:
        log_mod.emit(self._log, note)


class StatusSink:
    """Counters for ``kioskctl status``: every note by name (those the core held back over their rate counted
    when their ``log.suppressed`` summary comes), turns by outcome, refused presses by reason (a refused press is
    not a turn), the usage of every turn summed, and the last turn's summary."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.turns: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.usage: dict[str, Any] = {}
        self.last_turn: dict[str, Any] | None = None

    def note(self, note: Note) -> None:
        self.events[note.name] += 1
        if note.name == "turn.done":
            self.turns[str(note.fields.get("outcome"))] += 1
            usage = note.fields.get("usage")
            if isinstance(usage, dict):
                self.usage = add_usage(self.usage, usage)
            self.last_turn = note.fields
        elif note.name == "turn.rejected":
            self.rejected[str(note.fields.get("reason"))] += 1
        elif note.name == "log.suppressed":
            self.events[str(note.fields.get("name"))] += int(note.fields.get("count", 0))

    def status(self) -> dict[str, Any]:
        return {"turns": dict(self.turns), "rejected": dict(self.rejected), "usage": self.usage,
                "events": dict(self.events), "last_turn": self.last_turn}
