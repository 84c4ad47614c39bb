"""The turn state machine: every decision kioskd makes about a visitor's turn and the connection.

Theory of operation. One table, ``TRANSITIONS``, maps (phase, input type) to a handler. ``handle(input, now)``
looks the pair up, runs the handler, and returns the actions for the daemon to execute in order. The machine
never awaits, sleeps, reads a clock or logs: time comes in as ``now`` (seconds, the same clock as ``Arm.at_s``),
timers go out as ``Arm`` and come back as ``Timeout``, log lines go out as ``Note``.

Connection and conversation phases share the table because a press means something different in each:

    CONNECTING ─SessionUpdated─► IDLE ─Pressed─► LISTENING ─Released (≥ min hold)─► WAITING ─AudioDelta─► SPEAKING
        ▲                          ▲ ◄──Released (< min hold)──┘          │ ▲                         │
        └─Timeout(reconnect)─ OFFLINE / FAULT ◄─Disconnected─ any online  │ └──────── Pressed (barge-in) ◄──┘
                                   └◄──────────── ResponseDone / PlaybackDrained / caps ──────────┘

A pair missing from the table is either a remote input (late deltas, unknown events: ignored, counted) or a
local input (a kioskd bug: ``LocalProtocolError``). Rows listed for ``ANY`` phase apply where no phase row does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import numpy as np

from kioskd.core import events as ev
from kioskd.core.backoff import delays
from kioskd.core.pcm import Pcm, Ring, ms_to_samples, samples_to_ms
from kioskd.core.realtime import ClientEvents
from kioskd.errors import LocalProtocolError, ServerRejected, classify


class Phase(str, Enum):
    CONNECTING = "connecting"
    OFFLINE = "offline"
    FAULT = "fault"
    IDLE = "idle"
    LISTENING = "listening"
    WAITING = "waiting"
    SPEAKING = "speaking"


ONLINE: Final = frozenset({Phase.IDLE, Phase.LISTENING, Phase.WAITING, Phase.SPEAKING})
IN_TURN: Final = frozenset({Phase.LISTENING, Phase.WAITING, Phase.SPEAKING})
#: inputs that come from the server: a pair the table lacks is ignored, not a bug
REMOTE: Final = (
    ev.SessionCreated, ev.SessionUpdated, ev.InputCommitted, ev.ResponseCreated, ev.AudioDelta, ev.AudioDone,
    ev.TranscriptDone, ev.ResponseDone, ev.ItemTruncated, ev.ServerError, ev.ServerEvent, ev.Unknown, ev.BadEvent,
    ev.Connected, ev.Disconnected,
)
#: server error codes that are expected now and then and change nothing (reference §9.2)
BENIGN_CODES: Final = frozenset(
    {"response_cancel_not_active", "invalid_value", "conversation_already_has_active_response",
     "input_audio_buffer_commit_empty"}
)
ANY: Final = None
EARCON_GAP_S: Final = 1.0
#: the session lifetimes kioskd believes (seconds): outside this the local clock is wrong, not the server
LIFETIME_RANGE_S: Final = (30.0, 3600.0)


@dataclass(frozen=True)
class TurnSettings:
    voice: str = "marin"
    instructions: str = ""
    min_hold_ms: int = 100
    append_ms: int = 20
    preroll_ms: int = 0
    hold_cap_s: float = 30.0
    reply_wait_s: float = 10.0
    reply_cap_s: float = 90.0
    connect_timeout_s: float = 10.0
    rearm_ms: int = 50
    recycle_margin_s: float = 120.0
    healthy_after_s: float = 60.0
    backoff_first_max_s: float = 1.0
    backoff_cap_s: float = 30.0
    fault_retry_s: float = 120.0
    quick_failure_s: float = 5.0  # a session that dies this soon after it was ready, before serving any
    # response, counts as a quick failure
    quick_failures_fatal: int = 3  # this many in a row: the endpoint or config is broken, not the network
    earcons: bool = True
    thinking_cue_s: float = 1.5  # no reply audio this long after release: a soft "still thinking" sound


@dataclass
class _Response:
    """One response from ``response.create`` to ``response.done``; the id is learnt from ``response.created``."""

    create_event_id: str
    id: str | None = None
    cancelled: bool = False


@dataclass
class _Turn:
    """What one visitor's turn has measured, for its summary line and ``kioskctl status``."""

    pressed_at_s: float
    released_at_s: float | None = None
    first_delta_at_s: float | None = None
    first_sound_at_s: float | None = None
    held_samples: int = 0
    reply_samples: int = 0
    usage: dict[str, Any] | None = None
    status: str | None = None
    underruns_at_start: int = 0
    underruns: int = 0
    playout: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        def since_release(t: float | None) -> int | None:
            if t is None or self.released_at_s is None:
                return None
            return round((t - self.released_at_s) * 1000)

        return {
            "held_ms": samples_to_ms(self.held_samples),
            "release_to_first_delta_ms": since_release(self.first_delta_at_s),
            "release_to_first_sound_ms": since_release(self.first_sound_at_s),
            "reply_ms": samples_to_ms(self.reply_samples),
            "underruns": self.underruns,
            "playout": self.playout,
            "status": self.status,
            "usage": self.usage,
        }


Handler = Callable[["TurnMachine", Any, float], list[ev.Action]]


class TurnMachine:
    """The whole turn, as a table. ``begin(now)`` starts it; ``handle(input, now)`` advances it."""

    def __init__(self, settings: TurnSettings, *, rand: Callable[[], float]) -> None:
        self.settings = settings
        self.phase = Phase.OFFLINE
        self._rand = rand
        self._events = ClientEvents()
        self._backoff = self._new_backoff()
        self._armed: set[ev.Timer] = set()
        self._preroll = Ring(ms_to_samples(settings.preroll_ms))
        self._pending: list[Pcm] = []
        self._pending_samples = 0
        self._responses: list[_Response] = []
        self._received: dict[str, int] = {}  # samples received per assistant item of the latest response
        self._done_items: set[str] = set()  # items of the latest response whose audio is complete
        self._recycle_due = False
        self._bad_seen: dict[tuple[str, str], int] = {}
        self._last_earcon_s: dict[ev.Earcon, float] = {}
        self._quick_failures = 0
        self._session_served = False  # the server started a response on this session: it works
        self._session_update_id: str | None = None
        self._create_deferred = False  # response.create waits for the previous response's response.done
        self._response_done = False
        self._end_of_reply_sent = False
        self._drained = False
        self._awaiting_played = False
        self._turn: _Turn | None = None
        self._last_release_s: float | None = None
        self._online_since_s: float | None = None
        self._lifetime_s: float | None = None
        self._underruns_total = 0
        self.last_turn: dict[str, Any] | None = None
        self.counters: dict[str, int] = {
            "turns": 0, "turns_done": 0, "too_short": 0, "rejected": 0, "barge_ins": 0, "bounces": 0,
            "server_errors": 0, "unknown_events": 0, "bad_events": 0, "late_deltas": 0, "disconnects": 0,
            "timeouts": 0,
        }

    # ------------------------------------------------------------------------------------------ entry points

    def begin(self, now: float) -> list[ev.Action]:
        """Start: open the first connection."""
        return [ev.SetLed(ev.Led.OFFLINE), *self._connect(now)]

    def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
        """Advance by one input; return the actions to execute, in order."""
        if isinstance(inp, ev.Pressed) and self._is_bounce(inp.at_s):
            self.counters["bounces"] += 1
            return [ev.Note("turn.bounce", "debug")]
        if isinstance(inp, ev.Timeout) and inp.timer not in self._armed:
            return []  # a timer that fired as it was being replaced or disarmed
        if isinstance(inp, ev.Timeout):
            self._armed.discard(inp.timer)
        key: type | ev.Timer = inp.timer if isinstance(inp, ev.Timeout) else type(inp)
        handler = TRANSITIONS.get((self.phase, key)) or TRANSITIONS.get((ANY, key))
        if handler is None:
            if isinstance(inp, REMOTE):
                return self._ignore(inp)
            raise LocalProtocolError(f"turn table has no row for {type(inp).__name__} in phase {self.phase.value}")
        return handler(self, inp, now)

    def status(self) -> dict[str, Any]:
        """A snapshot for ``kioskctl status`` (plain data)."""
        return {
            "phase": self.phase.value,
            "connection": "online" if self.phase in ONLINE else self.phase.value,
            "counters": dict(self.counters),
            "last_turn": self.last_turn,
        }

    # ------------------------------------------------------------------------------------------ helpers

    def _new_backoff(self) -> Iterator[float]:
        s = self.settings
        return delays(first_max_s=s.backoff_first_max_s, cap_s=s.backoff_cap_s, rand=self._rand)

    def _arm(self, timer: ev.Timer, at_s: float) -> ev.Arm:
        self._armed.add(timer)
        return ev.Arm(timer, at_s)

    def _disarm(self, *timers: ev.Timer) -> list[ev.Action]:
        out: list[ev.Action] = []
        for timer in timers:
            if timer in self._armed:
                self._armed.discard(timer)
                out.append(ev.Disarm(timer))
        return out

    def _to(self, phase: Phase, **fields: Any) -> list[ev.Action]:
        if phase is self.phase:
            return []
        note = ev.Note("turn.phase", "info", {"from": self.phase.value, "to": phase.value, **fields})
        self.phase = phase
        return [note]

    def _earcon(self, earcon: ev.Earcon, now: float) -> list[ev.Action]:
        """An earcon, unless they are off or the same one started less than EARCON_GAP_S ago (presses while
        offline must not queue a string of prompts that then play into the next question)."""
        last_s = self._last_earcon_s.get(earcon)
        if not self.settings.earcons or (last_s is not None and now - last_s < EARCON_GAP_S):
            return []
        self._last_earcon_s[earcon] = now
        return [ev.PlayEarcon(earcon)]

    def _is_bounce(self, at_s: float) -> bool:
        last = self._last_release_s
        return last is not None and 0 <= at_s - last < self.settings.rearm_ms / 1000

    def _ignore(self, inp: ev.Input) -> list[ev.Action]:
        if isinstance(inp, ev.Unknown):
            self.counters["unknown_events"] += 1
            return [ev.Note("ws.unknown_event", "debug", {"type": inp.type})]
        if isinstance(inp, ev.AudioDelta):
            self.counters["late_deltas"] += 1
            return []
        return [ev.Note("turn.ignored", "debug", {"input": type(inp).__name__, "phase": self.phase.value})]

    def _connect(self, now: float) -> list[ev.Action]:
        return [*self._to(Phase.CONNECTING), ev.Connect(), self._arm(ev.Timer.CONNECT, now + self.settings.connect_timeout_s)]

    def _open_response(self) -> _Response | None:
        """The response of the current turn, if it has not ended."""
        return self._responses[-1] if self._responses else None

    def _cancel(self) -> list[ev.Action]:
        """``response.cancel`` for the open response, if there is one (never earns response_cancel_not_active)."""
        resp = self._open_response()
        if resp is None or resp.cancelled:
            return []
        resp.cancelled = True
        return [ev.Send(self._events.response_cancel(resp.id))]

    def _reset_reply(self) -> None:
        self._response_done = self._end_of_reply_sent = self._drained = False

    def _finish_turn(self, status: str | None) -> dict[str, Any]:
        turn = self._turn
        self._turn = None
        if turn is None:
            return {}
        turn.status = status or turn.status
        turn.reply_samples = sum(self._received.values())
        self.last_turn = turn.summary()
        return self.last_turn

    def _start_listening(self, now: float, *, preroll: bool) -> list[ev.Action]:
        self.counters["turns"] += 1
        self._turn = _Turn(pressed_at_s=now, underruns_at_start=self._underruns_total)
        self._create_deferred = False  # a new question replaces one whose response.create was still waiting
        self._pending, self._pending_samples = [], 0
        self._reset_reply()
        out: list[ev.Action] = [*self._to(Phase.LISTENING)]
        held = self._preroll.take()
        if not self._awaiting_played:
            out.append(ev.Send(self._events.clear()))
            if preroll and held.size:
                out.append(ev.Send(self._events.append(held)))
        out += [ev.SetLed(ev.Led.LISTENING), self._arm(ev.Timer.HOLD_CAP, now + self.settings.hold_cap_s)]
        if preroll:  # the press is acknowledged by ear too (a barge-in is acknowledged by the speaker stopping)
            out += self._earcon(ev.Earcon.PRESS, now)
        return out

    def _go_idle(self, now: float) -> list[ev.Action]:
        self._preroll.clear()
        self._reset_reply()
        if self._recycle_due:
            self._recycle_due = False
            return self._recycle(now)
        return [*self._to(Phase.IDLE), ev.SetLed(ev.Led.IDLE)]

    def _flush_appends(self) -> list[ev.Action]:
        if not self._pending_samples:
            return []
        pcm = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_samples = [], 0
        return [ev.Send(self._events.append(pcm))]

    # ------------------------------------------------------------------------------------------ connection

    def _on_session_created(self, inp: ev.SessionCreated, now: float) -> list[ev.Action]:
        s = self.settings
        update = self._events.session_update(voice=s.voice, instructions=s.instructions)
        self._session_update_id = update["event_id"]
        out: list[ev.Action] = [ev.Note("ws.session_created", "info", {"session_id": inp.session_id})]
        low_s, high_s = LIFETIME_RANGE_S
        lifetime_s = inp.expires_in_s
        if lifetime_s is not None and not low_s <= lifetime_s <= high_s:
            out.append(ev.Note("ws.clock_skew", "warning", {"expires_in_s": round(lifetime_s), "assumed_s": high_s}))
            lifetime_s = high_s
        self._lifetime_s = lifetime_s
        return [*out, ev.Send(update)]

    def _on_session_updated(self, inp: ev.SessionUpdated, now: float) -> list[ev.Action]:
        out: list[ev.Action] = [*self._disarm(ev.Timer.CONNECT)]
        if inp.turn_detection is not None:
            out.append(ev.Note("ws.session_mismatch", "warning", {"turn_detection": inp.turn_detection}))
        self._online_since_s = now
        self._session_served = False
        self._responses.clear()
        self._recycle_due = False
        if self._lifetime_s is not None:
            lifetime_s = self._lifetime_s
            out.append(self._arm(ev.Timer.RECYCLE, now + max(lifetime_s / 2, lifetime_s - self.settings.recycle_margin_s)))
        out += self._go_idle(now)
        out.append(ev.Note("ws.ready", "info"))
        return out

    def _on_connect_timeout(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self.counters["timeouts"] += 1
        delay_s = next(self._backoff)
        return [
            ev.Note("ws.connect_timeout", "warning", {"timeout_s": self.settings.connect_timeout_s, "retry_in_s": round(delay_s, 2)}),
            ev.Close(1000), *self._to(Phase.OFFLINE), ev.SetLed(ev.Led.OFFLINE),
            self._arm(ev.Timer.RECONNECT, now + delay_s),
        ]

    def _on_reconnect(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return self._connect(now)

    def _on_disconnected(self, inp: ev.Disconnected, now: float) -> list[ev.Action]:
        return self._go_offline(inp.cause, now)

    def _go_offline(self, cause: BaseException, now: float, *, fatal: bool = False) -> list[ev.Action]:
        """Any online phase → OFFLINE (retryable) or FAULT (fatal): end the turn, apologise if one was under way."""
        self.counters["disconnects"] += 1
        verdict = "fatal" if fatal else classify(cause)
        if self._online_since_s is not None:
            quick = not self._session_served and now - self._online_since_s < self.settings.quick_failure_s
            self._quick_failures = self._quick_failures + 1 if quick else 0
            if self._quick_failures >= self.settings.quick_failures_fatal:
                verdict = "fatal"  # the quick-failure rule: it connects, then dies at once, again and again
        was = self.phase
        out: list[ev.Action] = [*self._disarm(*ev.Timer)]
        if was is Phase.SPEAKING:
            out.append(ev.Interrupt())
            self._awaiting_played = True
        if was in IN_TURN:
            self._finish_turn("disconnected")
            out += self._earcon(ev.Earcon.APOLOGY, now)
        if self._online_since_s is not None and now - self._online_since_s >= self.settings.healthy_after_s:
            self._backoff = self._new_backoff()
        self._online_since_s = None
        self._responses.clear()
        self._create_deferred = False
        self._reset_reply()
        fields = {"error": str(cause), "error_type": type(cause).__name__, "phase": was.value}
        if verdict == "fatal":
            delay_s = self.settings.fault_retry_s
            out += [ev.Note("ws.fault", "error", {**fields, "retry_in_s": delay_s}), ev.Close(1000),
                    *self._to(Phase.FAULT), ev.SetLed(ev.Led.ERROR)]
        else:
            delay_s = next(self._backoff)
            out += [ev.Note("ws.disconnected", "warning", {**fields, "retry_in_s": round(delay_s, 2)}),
                    *self._to(Phase.OFFLINE), ev.SetLed(ev.Led.OFFLINE)]
        out.append(self._arm(ev.Timer.RECONNECT, now + delay_s))
        return out

    def _on_reload_offline(self, inp: ev.Reloaded, now: float) -> list[ev.Action]:
        """A reload while OFFLINE or in FAULT (perhaps a rotated credential): try again now."""
        self._quick_failures = 0
        self._backoff = self._new_backoff()
        return [*self._disarm(ev.Timer.RECONNECT), ev.Note("ws.reconnect_on_reload", "info"), *self._connect(now)]

    def _on_reload_idle(self, inp: ev.Reloaded, now: float) -> list[ev.Action]:
        return self._recycle(now) if inp.session_changed else []

    def _on_reload_in_turn(self, inp: ev.Reloaded, now: float) -> list[ev.Action]:
        self._recycle_due = self._recycle_due or inp.session_changed  # renew the session once the turn ends
        return []

    def _on_recycle(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return self._recycle(now)

    def _on_recycle_in_turn(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self._recycle_due = True  # never cut a visitor's turn: recycle on the way back to IDLE
        return []

    def _recycle(self, now: float) -> list[ev.Action]:
        return [*self._disarm(*ev.Timer), ev.Note("ws.recycle", "info"), ev.Close(1000), *self._connect(now)]

    def _on_press_offline(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        self.counters["rejected"] += 1
        return [ev.Note("turn.rejected", "warning", {"phase": self.phase.value}), *self._earcon(ev.Earcon.OFFLINE, now)]

    # ------------------------------------------------------------------------------------------ the turn

    def _on_mic_idle(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        self._preroll.push(inp.pcm)
        return []

    def _on_mic_dropped(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        return []  # the mic is sent only while the button is held

    def _on_press_held(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        return [ev.Note("turn.ignored", "debug", {"input": "Pressed", "phase": self.phase.value})]

    def _on_press_idle(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        return self._start_listening(now, preroll=True)

    def _on_mic_listening(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        assert self._turn is not None
        self._turn.held_samples += inp.pcm.size
        self._pending.append(inp.pcm)
        self._pending_samples += inp.pcm.size
        if self._awaiting_played or self._pending_samples < ms_to_samples(self.settings.append_ms):
            return []
        return self._flush_appends()

    def _on_release_listening(self, inp: ev.Released, now: float) -> list[ev.Action]:
        assert self._turn is not None
        held_ms = samples_to_ms(self._turn.held_samples)
        if held_ms < self.settings.min_hold_ms:
            self.counters["too_short"] += 1
            self._finish_turn("too_short")
            self._pending, self._pending_samples = [], 0
            return [*self._disarm(ev.Timer.HOLD_CAP), ev.Send(self._events.clear()),
                    ev.Note("turn.too_short", "info", {"held_ms": held_ms, "min_hold_ms": self.settings.min_hold_ms}),
                    *self._go_idle(now)]
        self._last_release_s = inp.at_s  # the re-arm window: a release bounce must not barge in on this turn
        return self._commit(now)

    def _on_hold_cap(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        assert self._turn is not None
        if samples_to_ms(self._turn.held_samples) < self.settings.min_hold_ms:  # a dead mic: nothing to commit
            return self._on_release_listening(ev.Released(now), now)
        return [ev.Note("turn.hold_cap", "warning", {"hold_cap_s": self.settings.hold_cap_s}), *self._commit(now)]

    def _commit(self, now: float) -> list[ev.Action]:
        assert self._turn is not None
        self._turn.released_at_s = now
        self._received = {}
        self._done_items = set()
        # one response at a time: a cancelled one that has not sent response.done yet still counts
        self._create_deferred = bool(self._responses)
        return [
            *self._disarm(ev.Timer.HOLD_CAP), *self._flush_appends(),
            ev.Send(self._events.commit()), *([] if self._create_deferred else self._create_response()),
            *self._to(Phase.WAITING, held_ms=samples_to_ms(self._turn.held_samples)),
            ev.SetLed(ev.Led.THINKING), self._arm(ev.Timer.REPLY_WAIT, now + self.settings.reply_wait_s),
            self._arm(ev.Timer.THINKING_CUE, now + self.settings.thinking_cue_s),
        ]

    def _create_response(self) -> list[ev.Action]:
        create = self._events.response_create()
        self._responses.append(_Response(create_event_id=create["event_id"]))
        return [ev.Send(create)]

    def _deferred_create(self) -> list[ev.Action]:
        """Send the response.create that waited for the previous response to end, once nothing is open."""
        if not self._create_deferred or self._responses:
            return []
        self._create_deferred = False
        return self._create_response()

    def _on_release_elsewhere(self, inp: ev.Released, now: float) -> list[ev.Action]:
        self._last_release_s = inp.at_s
        return []  # its press was rejected, capped or bounced

    def _on_response_created(self, inp: ev.ResponseCreated, now: float) -> list[ev.Action]:
        self._session_served = True
        for resp in self._responses:
            if resp.id is None:
                resp.id = inp.response_id
                break
        return []

    def _is_current(self, response_id: str) -> bool:
        resp = self._open_response()
        return resp is not None and not resp.cancelled and resp.id == response_id

    def _on_delta(self, inp: ev.AudioDelta, now: float) -> list[ev.Action]:
        if not self._is_current(inp.response_id) or self._turn is None:
            return self._ignore(inp)
        turn = self._turn
        self._received[inp.item_id] = self._received.get(inp.item_id, 0) + inp.pcm.size
        self._end_of_reply_sent = self._drained = False
        out: list[ev.Action] = [ev.Play(inp.pcm, inp.item_id)]
        if self.phase is Phase.WAITING:
            turn.first_delta_at_s = now
            out = [*self._disarm(ev.Timer.REPLY_WAIT, ev.Timer.THINKING_CUE), *self._to(Phase.SPEAKING), ev.SetLed(ev.Led.SPEAKING),
                   self._arm(ev.Timer.REPLY_CAP, now + self.settings.reply_cap_s), *out]
        return out

    def _on_audio_done(self, inp: ev.AudioDone, now: float) -> list[ev.Action]:
        if not self._is_current(inp.response_id):
            return []
        self._done_items.add(inp.item_id)
        return self._end_of_reply()

    def _end_of_reply(self) -> list[ev.Action]:
        if self._end_of_reply_sent:
            return []
        self._end_of_reply_sent = True
        return [ev.EndOfReply()]

    def _response_ended(self, inp: ev.ResponseDone) -> bool:
        """Forget the response; True if it was the current turn's."""
        current = self._is_current(inp.response_id)
        self._responses = [r for r in self._responses if r.id != inp.response_id]
        if current and self._turn is not None:
            self._turn.usage, self._turn.status = inp.usage, inp.status
        return current

    def _on_response_done_waiting(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        if not self._response_ended(inp):
            return self._deferred_create()
        summary = self._finish_turn(inp.status)
        out: list[ev.Action] = [*self._disarm(ev.Timer.REPLY_WAIT, ev.Timer.THINKING_CUE),
                                ev.Note("turn.no_audio", "warning", {"status": inp.status, "reason": inp.reason, **summary})]
        if inp.status != "completed":
            out += self._earcon(ev.Earcon.APOLOGY, now)
        return [*out, *self._go_idle(now)]

    def _on_response_done_speaking(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        if not self._response_ended(inp):
            return []
        self._response_done = True
        if self._drained:
            return self._turn_done(now)
        return self._end_of_reply()

    def _on_response_done_elsewhere(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        self._response_ended(inp)
        return self._deferred_create()

    def _on_thinking_cue(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return self._earcon(ev.Earcon.THINKING, now)

    def _on_late_cue(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return []  # the reply came (or the turn ended) before the cue was due

    def _on_drained(self, inp: ev.PlaybackDrained, now: float) -> list[ev.Action]:
        self._underruns_total = inp.underruns_total
        if self._turn is not None:
            self._turn.playout = inp.playout or None
        if not self._end_of_reply_sent:
            return []  # an earcon ran out, not the reply
        self._drained = True
        return self._turn_done(now) if self._response_done else []

    def _on_drained_elsewhere(self, inp: ev.PlaybackDrained, now: float) -> list[ev.Action]:
        self._underruns_total = inp.underruns_total
        return []

    def _on_started(self, inp: ev.PlaybackStarted, now: float) -> list[ev.Action]:
        if self._turn is not None and self._turn.first_sound_at_s is None:
            self._turn.first_sound_at_s = inp.at_s
        return []

    def _turn_done(self, now: float) -> list[ev.Action]:
        if self._turn is not None:
            self._turn.underruns = self._underruns_total - self._turn.underruns_at_start
        self.counters["turns_done"] += 1
        self._backoff = self._new_backoff()  # a session that answered a visitor in full is healthy
        self._quick_failures = 0
        summary = self._finish_turn(None)
        return [*self._disarm(ev.Timer.REPLY_CAP), ev.Note("turn.done", "info", summary), *self._go_idle(now)]

    def _on_reply_wait(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self.counters["timeouts"] += 1
        summary = self._finish_turn("timeout")
        cancel = self._cancel()
        self._responses = [r for r in self._responses if r.id is not None]  # never started: nothing will name it
        self._create_deferred = False
        return [*cancel, *self._earcon(ev.Earcon.APOLOGY, now),
                ev.Note("turn.timeout", "error", {"waited_s": self.settings.reply_wait_s, **summary}), *self._go_idle(now)]

    def _on_reply_cap(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self.counters["timeouts"] += 1
        self._awaiting_played = True
        summary = self._finish_turn("reply_cap")
        return [ev.Interrupt(), *self._cancel(), ev.Note("turn.reply_cap", "warning", {"reply_cap_s": self.settings.reply_cap_s, **summary}),
                *self._go_idle(now)]

    def _on_barge_in(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        """Stop → cancel → (Played: truncate) → clear → listen. The pre-roll holds the exhibit's voice: not sent."""
        self.counters["barge_ins"] += 1
        was = self.phase
        out: list[ev.Action] = [*self._disarm(ev.Timer.REPLY_WAIT, ev.Timer.REPLY_CAP, ev.Timer.THINKING_CUE)]
        if was is Phase.SPEAKING:
            out.append(ev.Interrupt())
            self._awaiting_played = True
        out += self._cancel()
        self._finish_turn("interrupted")
        out.append(ev.Note("turn.barge_in", "info", {"phase": was.value}))
        return out + self._start_listening(now, preroll=False)

    def _on_played(self, inp: ev.Played, now: float) -> list[ev.Action]:
        """After an Interrupt: truncate the item to what the visitor heard, then clear the input buffer."""
        if not self._awaiting_played:
            return []
        self._awaiting_played = False
        out: list[ev.Action] = []
        if self.phase not in ONLINE:
            return out
        if inp.item_id is not None and inp.item_id in self._received:
            received_ms = samples_to_ms(self._received[inp.item_id])
            end_ms = max(0, min(inp.played_ms, received_ms))
            if end_ms < received_ms or inp.item_id not in self._done_items:
                out.append(ev.Send(self._events.truncate(inp.item_id, end_ms)))
            out.append(ev.Note("turn.truncated", "info", {"item_id": inp.item_id, "played_ms": inp.played_ms,
                                                           "received_ms": received_ms, "audio_end_ms": end_ms}))
        if self.phase is Phase.LISTENING:
            out.append(ev.Send(self._events.clear()))
            out += self._flush_appends()
        return out

    # ------------------------------------------------------------------------------------------ server errors

    def _on_server_error(self, inp: ev.ServerError, now: float) -> list[ev.Action]:
        self.counters["server_errors"] += 1
        # an error naming our response.create means that response will never start
        self._responses = [r for r in self._responses if not (r.id is None and r.create_event_id == inp.event_id)]
        fields = {"code": inp.code, "message": inp.message, "error_type": inp.error_type, "event_id": inp.event_id}
        cause = ServerRejected(inp.code, inp.message, inp.event_id, inp.error_type)
        if self.phase is Phase.CONNECTING and inp.event_id is not None and inp.event_id == self._session_update_id:
            # the server refused our session configuration: retrying the same one cannot help
            return self._go_offline(cause, now, fatal=True)
        if inp.code in BENIGN_CODES:
            return [ev.Note("ws.server_error", "warning", fields)]
        if self.phase in ONLINE | {Phase.CONNECTING} and classify(cause) == "fatal":
            return self._go_offline(cause, now)
        return [ev.Note("ws.server_error", "error" if self.phase in IN_TURN else "warning", fields)]

    def _on_bad_event(self, inp: ev.BadEvent, now: float) -> list[ev.Action]:
        """One warning per (type, reason); repeats are counted and logged at debug."""
        self.counters["bad_events"] += 1
        key = (inp.event_type, inp.reason)
        seen = self._bad_seen[key] = self._bad_seen.get(key, 0) + 1
        return [ev.Note("ws.bad_event", "warning" if seen == 1 else "debug",
                        {"type": inp.event_type, "reason": inp.reason, "count": seen})]


def _rows() -> dict[tuple[Phase | None, type | ev.Timer], Handler]:
    M = TurnMachine
    P = Phase
    T = ev.Timer
    rows: dict[tuple[Phase | None, type | ev.Timer], Handler] = {
        # connection (a Timeout is looked up by its timer)
        (P.CONNECTING, ev.SessionCreated): M._on_session_created,
        (P.CONNECTING, ev.SessionUpdated): M._on_session_updated,
        (P.CONNECTING, T.CONNECT): M._on_connect_timeout,
        (P.OFFLINE, T.RECONNECT): M._on_reconnect,
        (P.FAULT, T.RECONNECT): M._on_reconnect,
        (P.IDLE, T.RECYCLE): M._on_recycle,
        (ANY, T.RECYCLE): M._on_recycle_in_turn,
        (P.LISTENING, T.HOLD_CAP): M._on_hold_cap,
        (P.WAITING, T.REPLY_WAIT): M._on_reply_wait,
        (P.SPEAKING, T.REPLY_CAP): M._on_reply_cap,
        (P.WAITING, T.THINKING_CUE): M._on_thinking_cue,
        (ANY, T.THINKING_CUE): M._on_late_cue,
        # presses
        (P.IDLE, ev.Pressed): M._on_press_idle,
        (P.LISTENING, ev.Pressed): M._on_press_held,
        (P.WAITING, ev.Pressed): M._on_barge_in,
        (P.SPEAKING, ev.Pressed): M._on_barge_in,
        (P.LISTENING, ev.Released): M._on_release_listening,
        (ANY, ev.Released): M._on_release_elsewhere,
        # microphone
        (P.IDLE, ev.MicBlock): M._on_mic_idle,
        (P.LISTENING, ev.MicBlock): M._on_mic_listening,
        (ANY, ev.MicBlock): M._on_mic_dropped,
        # the reply
        (ANY, ev.ResponseCreated): M._on_response_created,
        (P.WAITING, ev.AudioDelta): M._on_delta,
        (P.SPEAKING, ev.AudioDelta): M._on_delta,
        (P.SPEAKING, ev.AudioDone): M._on_audio_done,
        (P.WAITING, ev.ResponseDone): M._on_response_done_waiting,
        (P.SPEAKING, ev.ResponseDone): M._on_response_done_speaking,
        (ANY, ev.ResponseDone): M._on_response_done_elsewhere,
        (P.SPEAKING, ev.PlaybackDrained): M._on_drained,
        (ANY, ev.PlaybackDrained): M._on_drained_elsewhere,
        (ANY, ev.PlaybackStarted): M._on_started,
        (ANY, ev.Played): M._on_played,
        # failures
        (ANY, ev.ServerError): M._on_server_error,
        (ANY, ev.BadEvent): M._on_bad_event,
    }
    for phase in (P.CONNECTING, P.OFFLINE, P.FAULT):
        rows[(phase, ev.Pressed)] = M._on_press_offline
    for phase in (P.CONNECTING, *ONLINE):
        rows[(phase, ev.Disconnected)] = M._on_disconnected
    rows[(P.OFFLINE, ev.Reloaded)] = rows[(P.FAULT, ev.Reloaded)] = M._on_reload_offline
    rows[(P.IDLE, ev.Reloaded)] = M._on_reload_idle
    for phase in (P.CONNECTING, *IN_TURN):
        rows[(phase, ev.Reloaded)] = M._on_reload_in_turn
    return rows


TRANSITIONS: Final = _rows()
