"""Sinks for the core's ``Note`` observations: the log line is one sink, the status counters another (the day's
spending, ``spend.py``, and the Prometheus metrics, ``prom.py``, are two more). The sinks live as long as the
process, so nothing counted dies with a machine that a kioskd bug replaced."""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any, Final, Protocol

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


#: turns kept per arm for stats, and arms at most (a model name is the service's word: bounded)
TURNS_KEPT: Final = 1000
ARMS_MAX: Final = 8
#: the latest turns listed by ``kioskctl stats``
LAST_TURNS: Final = 10
_LAST_KEYS: Final = ("turn", "outcome", "backend", "model", "route", "release_to_first_sound_ms", "reply_ms",
                     "underruns", "cost_usd", "tools", "cause")
Entry = tuple[float | None, float, int]  # release → first sound ms (None: none played), cost_usd, underruns


class StatusSink:
    """Counters for ``kioskctl status``: every note by name (those the core held back over their rate counted
    when their ``log.suppressed`` summary comes), turns by outcome, refused presses by reason (a refused press is
    not a turn), the usage of every turn summed, and the last turn's summary."""

    def __init__(self) -> None:
        #: per arm (backend, model): the latest turns' (release → first sound ms or None, cost_usd), for stats;
        #: ``ab_arms`` the same over the turns of visitors the A/B test drew (route ``ab``) only
        self.arms: dict[tuple[str, str], deque[Entry]] = {}
        self.ab_arms: dict[tuple[str, str], deque[Entry]] = {}
        self.last_turns: deque[dict[str, Any]] = deque(maxlen=LAST_TURNS)
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
            arm = (str(note.fields.get("backend", "realtime")), str(note.fields.get("model", "")))
            sound, cost = note.fields.get("release_to_first_sound_ms"), note.fields.get("cost_usd")
            underruns = note.fields.get("underruns")
            entry = (float(sound) if isinstance(sound, (int, float)) else None,
                     float(cost) if isinstance(cost, (int, float)) else 0.0,
                     underruns if isinstance(underruns, int) else 0)
            self.last_turns.append({k: note.fields[k] for k in _LAST_KEYS if k in note.fields})
            for arms in (self.arms, self.ab_arms) if note.fields.get("route") == "ab" else (self.arms,):
                if arm in arms or len(arms) < ARMS_MAX:
                    arms.setdefault(arm, deque(maxlen=TURNS_KEPT)).append(entry)
        elif note.name == "turn.rejected":
            self.rejected[str(note.fields.get("reason"))] += 1
        elif note.name == "log.suppressed":
            self.events[str(note.fields.get("name"))] += int(note.fields.get("count", 0))

    def stats(self) -> dict[str, Any]:
        """For ``kioskctl stats``: per arm (backend and model), over its latest ``TURNS_KEPT`` turns, release →
        first sound p50 / p95 (answered turns that played) and the cost per turn."""
        return {"arms": _by_arm(self.arms), "ab": _by_arm(self.ab_arms), "turns_kept": TURNS_KEPT,
                "last_turns": list(self.last_turns)}

    def status(self) -> dict[str, Any]:
        return {"turns": dict(self.turns), "rejected": dict(self.rejected), "usage": self.usage,
                "events": dict(self.events), "last_turn": self.last_turn}


def _by_arm(arms: dict[tuple[str, str], deque[Entry]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (backend, model), turns in sorted(arms.items()):
        sounds = sorted(t for t, _, _ in turns if t is not None)
        out[f"{backend}/{model}"] = {
            "turns": len(turns), "backend": backend, "model": model,
            "release_to_first_sound_ms": {"p50": _quantile(sounds, 0.5), "p95": _quantile(sounds, 0.95)},
            "underruns": sum(u for _, _, u in turns),
            "cost_per_turn_usd": round(sum(c for _, c, _ in turns) / len(turns), 6),
        }
    return out


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values; None when there are none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
