"""One ``turn.done`` line per turn, however it ends, with the summed usage of every response it caused.

A turn that ends while some of its responses are still open (a cancelled reply whose ``response.done`` has not
come yet) waits here, closed but not yet logged. Its line goes out when the last of those responses reports, or
``usage_wait_s`` after the turn ended, saying how many never did. A turn whose reply an ``Interrupt`` stopped
also waits for the speaker's ``Played``, which says how much of the reply was heard (it follows at once: the
executor feeds it before any other input). Pure: the turn machine arms the one ``USAGE_WAIT`` timer at
``deadline()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from kioskd.core import events as ev
from kioskd.core.ledger import Bill, Ledger
from kioskd.core.pcm import samples_to_ms
from kioskd.core.settings import ModelArm

#: how a turn can end, and the level its ``turn.done`` line is logged at
OUTCOMES: Final[dict[str, ev.Level]] = {
    "answered": "info", "interrupted": "info", "too_short": "info", "no_audio": "warning", "capped": "warning",
    "timed_out": "error", "failed": "error", "disconnected": "error",
}


@dataclass
class TurnRecord:
    """What one visitor's turn has measured, for its ``turn.done`` line and ``kioskctl status``."""

    id: int
    pressed_at_s: float
    released_at_s: float | None = None
    first_delta_at_s: float | None = None
    first_sound_at_s: float | None = None
    held_samples: int = 0
    reply_received_ms: int = 0
    reply_ms: int | None = 0  # heard; None: the speaker never said (its Interrupt failed, or a bug intervened)
    awaiting_played: bool = False  # an Interrupt stopped the reply: the line waits for its Played
    underruns_at_start: int = 0
    underruns: int = 0
    playout: dict[str, Any] | None = None
    outcome: str = ""
    cause: str | None = None
    ended_at_s: float = 0.0
    tools: list[str] = field(default_factory=list)  # the tools the model called, in order
    arm: ModelArm = ModelArm("realtime", "", None)  # who answered (backend and model, priced in cost_usd)
    route: str = "main"  # why that arm: main, fallback (the Realtime link was down) or ab (the A/B draw)
    failure: str | None = None  # the reply broke off mid-answer (a failed response): the turn fails when played

    def summary(self, bill: Bill) -> dict[str, Any]:
        def since_release(t: float | None) -> int | None:
            if t is None or self.released_at_s is None:
                return None
            return round((t - self.released_at_s) * 1000)

        out: dict[str, Any] = {
            "turn": self.id, "outcome": self.outcome,
            "held_ms": samples_to_ms(self.held_samples),
            "release_to_first_delta_ms": since_release(self.first_delta_at_s),
            "release_to_first_sound_ms": since_release(self.first_sound_at_s),
            "reply_ms": self.reply_ms, "reply_received_ms": self.reply_received_ms,
            "underruns": self.underruns, "playout": self.playout, "backend": self.arm.backend, "model": self.arm.model,
            "route": self.route,
            **bill.fields(),
        }
        if self.tools:
            out["tools"] = self.tools
        if self.cause is not None:
            out["cause"] = self.cause
        return out


class TurnLog:
    """Ended turns, each logged once: at once, or when its open responses have reported (or been given up on)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._closing: dict[int, TurnRecord] = {}  # ended turns whose responses have not all reported usage
        self.last_turn: dict[str, Any] | None = None
        self.last_outcome: str | None = None

    def end(self, turn: TurnRecord, outcome: str, now: float, cause: str | None) -> list[ev.Action]:
        """``turn`` is over: its line now, or nothing yet if responses of it are open (see ``deadline``)."""
        turn.outcome, turn.cause, turn.ended_at_s = outcome, cause, now
        self.last_outcome = outcome
        if self._ledger.open_for(turn.id) or turn.awaiting_played:
            self._closing[turn.id] = turn
            return []
        return [self._line(turn)]

    def played(self, heard_ms: int | None) -> list[ev.Action]:
        """The speaker said how much of the interrupted reply was heard: the turn waiting for that has its
        ``reply_ms``, and its line if nothing of it is open."""
        for turn in self._closing.values():
            if turn.awaiting_played:
                turn.reply_ms, turn.awaiting_played = heard_ms, False
                return self.settle(turn.id)
        return []

    def settle(self, turn_id: int | None) -> list[ev.Action]:
        """A response of ``turn_id`` reported: if that turn has ended and nothing of it is open, log it."""
        turn = self._closing.get(turn_id) if turn_id is not None else None
        if turn is None or self._ledger.open_for(turn.id) or turn.awaiting_played:
            return []
        del self._closing[turn.id]
        return [self._line(turn)]

    def expire(self, now: float, wait_s: float) -> list[ev.Action]:
        """Turns ended ``wait_s`` ago or more: give up on their responses and log them, usage missing."""
        out: list[ev.Action] = []
        for turn in sorted(self._closing.values(), key=lambda t: t.ended_at_s):
            if now - turn.ended_at_s >= wait_s:
                out += self._ledger.forget(turn.id)
                del self._closing[turn.id]
                out.append(self._line(turn))
        return out

    def flush(self) -> list[ev.Action]:
        """The session is gone (``Ledger.lost`` was called): every waiting turn is logged now."""
        out: list[ev.Action] = [self._line(turn) for turn in self._closing.values()]
        self._closing.clear()
        return out

    @property
    def waiting(self) -> bool:
        """Some ended turn is still waiting for its responses' usage (or, for a moment, for its ``Played``)."""
        return bool(self._closing)

    def deadline(self, wait_s: float) -> float | None:
        """When the oldest waiting turn is to be given up on; None when none waits."""
        if not self._closing:
            return None
        return min(t.ended_at_s for t in self._closing.values()) + wait_s

    def _line(self, turn: TurnRecord) -> ev.Note:
        self.last_turn = turn.summary(self._ledger.close(turn.id))
        return ev.Note("turn.done", OUTCOMES[turn.outcome], self.last_turn)
