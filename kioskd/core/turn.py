"""The visitor's turn: press, question, reply, barge-in; every decision about it, as a table.

Theory of operation. ``TurnMachine`` is one of the two machines ``core/kiosk.py`` couples (the other is the link,
``core/link.py``). Its phases are the visitor's: IDLE, LISTENING (button held, microphone sent), WAITING
(question committed, no reply audio yet) and SPEAKING (reply audio arriving or playing). It never sees a socket:
it says what to tell the model as intentions (``StartQuestion``, ``AppendAudio``, ``Commit``, ``RequestReply``,
``CancelReply``, ``Truncate``…), and it learns which backend can answer from ``Availability`` inputs.

A turn spans every response it causes: ``core/ledger.py`` books each response to the turn that asked for it. A
turn ends when the visitor has heard the last reply, interrupted it, or a cap or a failure ended it; its one
``turn.done`` line (with an ``outcome``) is written once every response it caused has reported its usage, or
``turn.usage_wait_s`` after it ended, saying how many never did.

    IDLE ─Pressed─► LISTENING ─Released (≥ min hold)─► WAITING ─AudioDelta─► SPEAKING
      ▲ ◄─Released (< min hold)─┘  ▲                        │                    │
      │                            └──── Pressed (barge-in) ◄┴────────────────────┤
      └◄────── reply heard in full / caps / failure / backend lost ◄─────────────┘
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kioskd.core import events as ev
from kioskd.core.arms import Arms
from kioskd.core.calls import Calls
from kioskd.core.conversation import Conversation
from kioskd.core.ledger import Ledger
from kioskd.core.pcm import Batch, Ring, ms_to_samples, samples_to_ms
from kioskd.core.rate import Burst
from kioskd.core.reply import Reply
from kioskd.core.settings import TurnSettings
from kioskd.core.table import ANY, Key, Row, row
from kioskd.core.turn_guide import GuideRows
from kioskd.core.turnphase import IN_TURN, TurnPhase
from kioskd.core.turnlog import TurnLog, TurnRecord

#: an earcon is not started again within this long of the last of its kind (presses while offline must not
#: queue a string of prompts that then play into the next question); the spoken ones last a few seconds
EARCON_GAP_S: Final = {ev.Earcon.PRESS: 1.0, ev.Earcon.THINKING: 1.0, ev.Earcon.OFFLINE: 5.0,
                       ev.Earcon.APOLOGY: 3.0, ev.Earcon.CLOSED: 5.0}
#: presses that may start a turn (or the offline prompt) within PRESS_WINDOW_S; more are a flood, refused
PRESS_BURST: Final = 10
PRESS_WINDOW_S: Final = 10.0
#: the reply has been heard in full; its ``response.done`` is given this long before the turn ends without it
DONE_GRACE_S: Final = 2.0


#: inputs from outside the core's control (the server, the speaker): a pair the table lacks is ignored
REMOTE: Final = (
    ev.SessionCreated, ev.SessionUpdated, ev.InputCommitted, ev.ResponseCreated, ev.AudioDelta, ev.AudioDone,
    ev.TranscriptDone, ev.ResponseDone, ev.ItemTruncated, ev.ServerError, ev.ServerEvent, ev.Unknown,
    ev.BadEvent, ev.Connected, ev.Disconnected, ev.ToolCall, ev.ItemAdded,
)


class TurnMachine(GuideRows):
    """The visitor's turn. ``handle(input, now)`` advances it (see ``core/table.py``)."""

    REMOTE = REMOTE

    def __init__(self, settings: TurnSettings, *, rand: Callable[[], float] = lambda: 1.0) -> None:
        super().__init__(TurnPhase.IDLE)
        self.settings = settings
        self._arms = Arms(settings, rand)  # who answers which visitor (rand: the A/B draw)
        self._down: dict[ev.Backend, str] = {"realtime": "connecting"}  # backends that cannot answer, and why
        self._preroll = Ring(ms_to_samples(settings.preroll_ms))
        self._pending = Batch()  # the question's audio not yet sent
        self._ledger = Ledger()
        self._turn: TurnRecord | None = None
        self._log = TurnLog(self._ledger)
        self._turns = 0
        self._reply = Reply()  # the last committed question's reply (a barge-in truncates it after the press)
        self._interrupting = False  # an Interrupt went out; its Played is due
        self._last_release_s: float | None = None
        self._last_earcon_s: dict[ev.Earcon, float] = {}
        self._underruns_total = 0
        self._reopen_s: float | None = None  # a speaker reopen waiting for the visitor to finish
        self._presses = Burst(PRESS_BURST, PRESS_WINDOW_S)
        self._calls = Calls()  # the current turn's tool calls
        self._conversation = Conversation()  # the session's items: deleted when a new visitor comes
        self._answer_due = False  # a tool's follow-up was asked for and has said nothing yet
        self.stuck_since_s: float | None = None  # held past the hold cap and not released since (a jammed button)

    # ------------------------------------------------------------------------------------------ entry points

    def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
        if isinstance(inp, ev.Pressed) and self._is_bounce(inp.at_s):
            return [ev.Note("turn.bounce", "debug")]
        return super().handle(inp, now)

    @property
    def last_turn(self) -> dict[str, Any] | None:
        return self._log.last_turn

    @property
    def last_outcome(self) -> str | None:
        return self._log.last_outcome

    @property
    def busy(self) -> bool:
        """A visitor is mid-turn, or an ended turn still waits for usage its session owes: no renewal now."""
        return self.phase is not TurnPhase.IDLE or self._log.waiting

    def abandon(self, now: float, cause: str) -> list[ev.Action]:
        """This machine is being replaced (a kioskd bug): the turn under way fails, and every turn still waiting
        for its usage is logged now, with that usage missing."""
        self._ledger.lost()
        out: list[ev.Action] = [a for a in self._end("failed", now, cause) if isinstance(a, ev.Note)]
        return out + self._log.flush()

    def ignore(self, inp: ev.Input) -> list[ev.Action]:
        if isinstance(inp, ev.AudioDelta):
            return [ev.Note("turn.late_delta", "debug", {"response_id": inp.response_id})]
        return super().ignore(inp)

    # ------------------------------------------------------------------------------------------ helpers

    def _earcon(self, earcon: ev.Earcon, now: float) -> list[ev.Action]:
        """An earcon, unless they are off or the same one started less than its EARCON_GAP_S ago (presses while
        offline must not queue a string of prompts that then play into the next question)."""
        last_s = self._last_earcon_s.get(earcon)
        if not self.settings.earcons or (last_s is not None and now - last_s < EARCON_GAP_S[earcon]):
            return []
        self._last_earcon_s[earcon] = now
        return [ev.PlayEarcon(earcon)]

    def _is_bounce(self, at_s: float) -> bool:
        last = self._last_release_s
        return last is not None and 0 <= at_s - last < self.settings.rearm_ms / 1000

    def _flush_appends(self) -> list[ev.Action]:
        pcm = self._pending.take()
        return [] if pcm is None else [ev.AppendAudio(pcm)]

    def _start_listening(self, now: float, *, preroll: bool) -> list[ev.Action]:
        assert self._arms.current is not None
        self._turns += 1
        self._turn = TurnRecord(self._turns, pressed_at_s=now, underruns_at_start=self._underruns_total,
                                arm=self._arms.current, route=self._arms.why)
        self._calls, self._answer_due = Calls(), False
        out: list[ev.Action] = [*self.disarm(ev.Timer.NEW_VISITOR)]  # the same visitor goes on
        self._pending.take()
        self._reply.ended = self._reply.drained = False
        self.phase = TurnPhase.LISTENING
        held = self._preroll.take()
        if not self._interrupting:  # after a barge-in the question starts once the truncate has gone
            out.append(ev.StartQuestion())
            if preroll and held.size:
                out.append(ev.AppendAudio(held))
        out.append(self.arm(ev.Timer.HOLD_CAP, now + self.settings.hold_cap_s))
        if preroll:  # the press is acknowledged by ear too (a barge-in is acknowledged by the speaker stopping)
            out += self._earcon(ev.Earcon.PRESS, now)
        return out

    def _go_idle(self, now: float) -> list[ev.Action]:
        """Back to IDLE: the quiet that makes the next press a new visitor starts now (the reply played out, or
        the release if nothing played)."""
        self._preroll.clear()
        self._reply.ended = self._reply.drained = False
        self.phase = TurnPhase.IDLE
        out = self.disarm(ev.Timer.HOLD_CAP, ev.Timer.REPLY_WAIT, ev.Timer.REPLY_CAP, ev.Timer.THINKING_CUE)
        if self._arms.current is not None:  # a visitor is being answered: their quiet starts
            out.append(self.arm(ev.Timer.NEW_VISITOR, now + self.settings.new_visitor_after_s))
        if self._reopen_s is not None:
            out.append(ev.ReopenSpeaker(self._reopen_s))
            self._reopen_s = None
        return out

    def _end(self, outcome: str, now: float, cause: str | None = None) -> list[ev.Action]:
        """The current turn is over (the phase is the caller's business): its line goes out now, or once its
        responses have all reported usage (at most ``usage_wait_s`` from now)."""
        turn, self._turn = self._turn, None
        if turn is None:
            return []
        turn.tools = self._calls.names
        owed = self._calls.cancel(answer=self._reachable)  # runs stopped; every call_id answered while a session is
        self._answer_due = False
        if turn.released_at_s is not None:  # a question was committed: this turn's reply is self._reply
            turn.reply_received_ms = self._reply.received_ms
            turn.reply_ms = self._reply.heard_ms
            turn.awaiting_played = self._interrupting  # the Interrupt just sent will say how much was heard
        return [*owed, *(self._log.end(turn, outcome, now, cause) or self._usage_timer())]

    def _settle(self, turn_id: int | None) -> list[ev.Action]:
        """A response of ``turn_id`` reported: its turn's line, if that turn had ended and nothing is left open."""
        lines = self._log.settle(turn_id)
        return [*lines, *self._usage_timer()] if lines else []

    def _usage_timer(self) -> list[ev.Action]:
        """USAGE_WAIT armed for the oldest ended turn still waiting for usage; disarmed when none is."""
        at_s = self._log.deadline(self.settings.usage_wait_s)
        return self.disarm(ev.Timer.USAGE_WAIT) if at_s is None else [self.arm(ev.Timer.USAGE_WAIT, at_s)]

    # ------------------------------------------------------------------------------------------ backends, reload

    def _on_availability(self, inp: ev.Availability, now: float) -> list[ev.Action]:
        """A backend came up or went down. Only the present visitor's backend (or, between visitors, any) touches
        the conversation and the turn: a visitor answered by the fallback goes on there when the Realtime link
        comes back, and is not disturbed when it drops again."""
        current = self._arms.current
        mine = current is None or current.backend == inp.backend
        if inp.up:
            self._down.pop(inp.backend, None)
            if inp.backend == "realtime":
                self._arms.session_model = inp.model
            if mine:
                self._conversation.clear()  # a new session: a new, empty conversation
            return []
        self._down[inp.backend] = inp.reason
        if not mine:
            return []
        self._arms.lost(inp.backend)  # the visitor's next press picks again (their A/B draw holds)
        self._conversation.clear()  # gone with the session: nothing to delete later
        # the backend went away: whatever it still owed will never come
        self._ledger.lost()
        out = [*self._log.flush(), *self.disarm(ev.Timer.USAGE_WAIT, ev.Timer.NEW_VISITOR)]
        if self.phase is TurnPhase.IDLE:
            return out
        out += self.disarm(ev.Timer.HOLD_CAP, ev.Timer.REPLY_WAIT, ev.Timer.REPLY_CAP, ev.Timer.THINKING_CUE)
        if self.phase is TurnPhase.SPEAKING:
            out.append(ev.Interrupt())
            self._interrupting = True
        out += self._earcon(ev.Earcon.APOLOGY, now)
        out += self._end("disconnected", now, cause=inp.cause or inp.reason)
        return out + self._go_idle(now)

    def _on_reloaded(self, inp: ev.Reloaded, now: float) -> list[ev.Action]:
        self.settings = inp.settings.turn  # caps apply at once; the pre-roll ring keeps its size until restart
        self._arms.reloaded(self.settings)
        self._down.pop("chat", None)  # perhaps a new key or endpoint for the fallback: it is tried again
        return []

    def _on_reopen_due(self, inp: ev.SpeakerReopenDue, now: float) -> list[ev.Action]:
        if self.phase is TurnPhase.IDLE:
            return [ev.ReopenSpeaker(inp.latency_s)]
        self._reopen_s = inp.latency_s  # never under a visit: on the way back to idle
        return []

    # ------------------------------------------------------------------------------------------ the question

    def _on_mic_idle(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        self._preroll.push(inp.pcm)
        return []

    def _on_mic_dropped(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        return []  # the microphone is sent only while the button is held

    def _on_press_idle(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        if not self._presses.allow(now):  # a flood (a child, a faulty switch): no turn, no request, one warning
            flood = {"reason": "press_flood", "limit": PRESS_BURST, "window_s": PRESS_WINDOW_S}
            first = [ev.Note("turn.press_flood", "warning", flood)] if self._presses.refused == 1 else []
            return [*first, ev.Note("turn.rejected", "debug", {"reason": "press_flood"})]
        out: list[ev.Action] = []
        if refused := self._presses.end_episode():
            out.append(ev.Note("turn.press_flood_over", "info", {"refused": refused}))
        if self.closed:  # nothing is sent to the service: the day's budget is spent
            return [*out, ev.Note("turn.rejected", "info", {"reason": "budget"}),
                    *self._earcon(ev.Earcon.CLOSED, now)]
        route = self._arms.pick(self._down)
        if route is None:  # a refused press is not a turn
            reason = self._down.get("realtime") or next(iter(self._down.values()))
            return [*out, ev.Note("turn.rejected", "warning", {"reason": reason}),
                    *self._earcon(ev.Earcon.OFFLINE, now)]
        return [*out, *route, *self._start_listening(now, preroll=True)]

    def _on_press_held(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        return self.ignore(inp)

    def _on_mic_listening(self, inp: ev.MicBlock, now: float) -> list[ev.Action]:
        assert self._turn is not None
        self._turn.held_samples += inp.pcm.size
        self._pending.add(inp.pcm)
        if self._interrupting or self._pending.samples < ms_to_samples(self.settings.append_ms):
            return []
        return self._flush_appends()

    def _on_release_listening(self, inp: ev.Released, now: float) -> list[ev.Action]:
        assert self._turn is not None
        held_ms = samples_to_ms(self._turn.held_samples)
        if held_ms < self.settings.min_hold_ms:  # nothing is committed: a tap never starts a reply
            self._pending.take()
            return [*self.disarm(ev.Timer.HOLD_CAP), ev.StartQuestion(),
                    *self._end("too_short", now, cause=f"held {held_ms} ms < {self.settings.min_hold_ms} ms"),
                    *self._go_idle(now)]
        self._last_release_s = inp.at_s  # the re-arm window: a release bounce must not barge in on this turn
        return self._commit(now)

    def _on_hold_cap(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        """Held past the cap: the question so far is committed, and the button is taken as stuck (error LED)
        until it is released."""
        assert self._turn is not None
        self.stuck_since_s = self._turn.pressed_at_s
        stuck = ev.Note("button.stuck", "warning", {"held_s": round(now - self._turn.pressed_at_s, 1)})
        if samples_to_ms(self._turn.held_samples) < self.settings.min_hold_ms:  # a dead mic: nothing to commit
            return [stuck, *self._on_release_listening(ev.Released(now), now)]
        return [ev.Note("turn.hold_cap", "warning", {"hold_cap_s": self.settings.hold_cap_s}), stuck,
                *self._commit(now)]

    def _commit(self, now: float) -> list[ev.Action]:
        assert self._turn is not None
        self._turn.released_at_s = now
        self._reply = Reply()
        out: list[ev.Action] = [*self.disarm(ev.Timer.HOLD_CAP), *self._flush_appends(), ev.Commit(),
                                *self._ledger.ask(self._turn.id, arm=self._turn.arm)]
        self.phase = TurnPhase.WAITING
        return [*out, self.arm(ev.Timer.REPLY_WAIT, now + self.settings.reply_wait_s),
                self.arm(ev.Timer.THINKING_CUE, now + self.settings.thinking_cue_s)]

    def _on_release_elsewhere(self, inp: ev.Released, now: float) -> list[ev.Action]:
        self._last_release_s = inp.at_s  # its press was rejected, capped or bounced
        if self.stuck_since_s is None:
            return []
        held_s, self.stuck_since_s = inp.at_s - self.stuck_since_s, None
        return [ev.Note("button.unstuck", "info", {"held_s": round(held_s, 1)})]

    # ------------------------------------------------------------------------------------------ the reply

    def _current_id(self) -> int | None:
        return self._turn.id if self._turn is not None else None

    def _on_response_created(self, inp: ev.ResponseCreated, now: float) -> list[ev.Action]:
        self._ledger.created(inp.response_id)
        return []

    def _on_delta(self, inp: ev.AudioDelta, now: float) -> list[ev.Action]:
        if self._turn is None or not self._ledger.is_current(inp.response_id, self._turn.id):
            return self.ignore(inp)
        self._reply.add(inp.item_id, inp.pcm.size)
        self._answer_due = False
        out = self.disarm(ev.Timer.REPLY_WAIT, ev.Timer.THINKING_CUE)  # in SPEAKING: more audio after a drain
        if self.phase is TurnPhase.WAITING:  # the reply begins (or, after a tool, its answer)
            if self._turn.first_delta_at_s is None:
                self._turn.first_delta_at_s = now
            self.phase = TurnPhase.SPEAKING
            out.append(self.arm(ev.Timer.REPLY_CAP, now + self.settings.reply_cap_s))
        return [*out, ev.Play(inp.pcm, inp.item_id)]

    def _on_audio_done(self, inp: ev.AudioDone, now: float) -> list[ev.Action]:
        if not self._ledger.is_current(inp.response_id, self._current_id()):
            return []
        self._reply.complete(inp.item_id)
        return self._reply.end()

    def _response_done(self, inp: ev.ResponseDone) -> tuple[bool, list[ev.Action]]:
        """Book the response; True if it belonged to the current turn (and it has nothing else open)."""
        turn_id, out = self._ledger.done(inp.response_id, inp.status, inp.usage)
        if turn_id is not None and turn_id == self._current_id():
            return not self._ledger.open_for(turn_id), out
        return False, [*out, *self._settle(turn_id)]

    def _on_response_done_waiting(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        last, out = self._response_done(inp)
        if not last:
            return out  # another response of this turn is still to come (a tool call's answer), or not ours
        if inp.status == "completed" and self._calls.active:  # it called tools: their answer is next
            return [*out, *self._follow_up(now)]
        outcome = "no_audio" if inp.status == "completed" else "failed"
        if outcome == "failed":
            out += self._earcon(ev.Earcon.APOLOGY, now)
        cause = f"response {inp.status}" + (f": {inp.reason}" if inp.reason else "")
        return [*out, *self.disarm(ev.Timer.REPLY_WAIT, ev.Timer.THINKING_CUE), *self._end(outcome, now, cause),
                *self._go_idle(now)]

    def _on_response_done_speaking(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        last, out = self._response_done(inp)
        if not last:
            return out
        if inp.status == "completed" and self._calls.active:  # a preamble, then tools: their answer is next
            return [*out, *self.disarm(ev.Timer.REPLY_WAIT), *self._reply.end(), *self._follow_up(now)]
        self._answer_due = False  # an answer without audio (or none) ends the turn when the preamble has played
        if inp.status == "failed" and self._turn is not None:  # cut mid-answer: what came plays, then the apology
            self._turn.failure = "response failed" + (f": {inp.reason}" if inp.reason else "")
        if self._reply.drained:
            return [*out, *self._answered(now)]
        return [*out, *self._reply.end()]

    def _on_response_done_elsewhere(self, inp: ev.ResponseDone, now: float) -> list[ev.Action]:
        return self._response_done(inp)[1]

    def _on_thinking_cue(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return self._earcon(ev.Earcon.THINKING, now)

    def _on_drained(self, inp: ev.PlaybackDrained, now: float) -> list[ev.Action]:
        self._underruns_total = inp.underruns_total
        assert self._turn is not None
        self._turn.playout = inp.playout or None
        if not self._reply.ended:
            return []  # an earcon ran out, not the reply
        self._reply.played_out(inp.dropped_ms)
        if self._answer_due or self._calls.active:
            return self._await_answer(now)  # a preamble was heard; the tools or their answer are still to come
        if self._ledger.open_for(self._turn.id):  # heard in full; its response.done is late
            return [self.arm(ev.Timer.REPLY_WAIT, now + DONE_GRACE_S)]
        return self._answered(now)

    def _on_drained_elsewhere(self, inp: ev.PlaybackDrained, now: float) -> list[ev.Action]:
        self._underruns_total = inp.underruns_total
        return []

    def _on_started(self, inp: ev.PlaybackStarted, now: float) -> list[ev.Action]:
        if self._turn is not None and self._turn.first_sound_at_s is None:
            self._turn.first_sound_at_s = inp.at_s
        return []

    def _answered(self, now: float) -> list[ev.Action]:
        """The reply has played out: the visitor is answered (or, if it broke off, apologised to)."""
        assert self._turn is not None
        self._turn.underruns = self._underruns_total - self._turn.underruns_at_start
        if self._turn.failure is not None:
            return [*self.disarm(ev.Timer.REPLY_CAP), *self._earcon(ev.Earcon.APOLOGY, now),
                    *self._end("failed", now, self._turn.failure), *self._go_idle(now)]
        return [*self.disarm(ev.Timer.REPLY_CAP), *self._end("answered", now), *self._go_idle(now)]

    def _on_done_overdue(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        """The reply was heard in full but its response never said it was done: the visitor is answered (the
        turn's line still waits ``usage_wait_s`` for the usage)."""
        return self._answered(now)

    def _on_usage_wait(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        """Ended turns whose responses did not report in time: logged with the usage missing."""
        return [*self._log.expire(now, self.settings.usage_wait_s), *self._usage_timer()]

    # ------------------------------------------------------------------------------------------ caps, barge-in

    def _on_reply_wait(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        out = [*self.disarm(ev.Timer.THINKING_CUE), *self._ledger.cancel(self._current_id()),
               *self._earcon(ev.Earcon.APOLOGY, now)]
        cause = f"no reply audio within {self.settings.reply_wait_s:g} s"
        return [*out, *self._end("timed_out", now, cause), *self._go_idle(now)]

    def _on_reply_cap(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self._interrupting = True
        out = [ev.Interrupt(), *self._ledger.cancel(self._current_id()), ev.ClearOutput()]
        cause = f"reply longer than {self.settings.reply_cap_s:g} s"
        return [*out, *self._end("capped", now, cause), *self._go_idle(now)]

    def _on_barge_in(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        """Stop → cancel → (Played: truncate) → clear → listen. The pre-roll holds the exhibit's voice: not sent."""
        was = self.phase
        out: list[ev.Action] = [*self.disarm(ev.Timer.REPLY_WAIT, ev.Timer.REPLY_CAP, ev.Timer.THINKING_CUE)]
        if was is TurnPhase.SPEAKING:
            out.append(ev.Interrupt())
            self._interrupting = True
        out += self._ledger.cancel(self._current_id())
        if was is TurnPhase.SPEAKING:
            out.append(ev.ClearOutput())
        out.append(ev.Note("turn.barge_in", "info", {"phase": was.value}))
        out += self._end("interrupted", now)
        return out + self._start_listening(now, preroll=False)

    def _on_played(self, inp: ev.Played, now: float) -> list[ev.Action]:
        """After an Interrupt: truncate the item to what the visitor heard, then start the question; the turn the
        Interrupt ended has its line (what was heard is now known)."""
        if not self._interrupting:
            return []
        self._interrupting = False
        self._reply.stopped_at(inp.item_id, inp.played_ms)
        lines = self._log.played(self._reply.heard_ms)
        if lines:
            lines += self._usage_timer()
        if not self._reachable:
            return lines
        out = self._reply.cut(inp.item_id, inp.played_ms)
        if self.phase is TurnPhase.LISTENING:
            out.append(ev.StartQuestion())
            out += self._flush_appends()
        return out + lines

    # ------------------------------------------------------------------------------------------ server errors

    def _on_server_error(self, inp: ev.ServerError, now: float) -> list[ev.Action]:
        """An error the link did not take as fatal. One naming a reply request means that reply never starts:
        a turn left waiting for nothing fails at once instead of at its reply cap."""
        turn_id, out = self._ledger.refused(inp.event_id)
        if turn_id is not None and turn_id == self._current_id() and not self._ledger.open_for(turn_id):
            self._answer_due = False  # a refused follow-up: no answer is coming
        fields = {"code": inp.code, "message": inp.message, "error_type": inp.error_type, "event_id": inp.event_id}
        ends = (turn_id is not None and turn_id == self._current_id() and self.phase is TurnPhase.WAITING
                and not self._ledger.open_for(turn_id))
        out = [ev.Note("ws.server_error", "error" if ends else "warning", fields), *out, *self._settle(turn_id)]
        if not ends:
            return out
        return [*out, *self.disarm(ev.Timer.REPLY_WAIT, ev.Timer.THINKING_CUE), *self._earcon(ev.Earcon.APOLOGY, now),
                *self._end("failed", now, cause=f"server error {inp.code}: {inp.message}"), *self._go_idle(now)]


def _table() -> dict[tuple[TurnPhase | None, Key], Row[TurnPhase]]:
    M, P, T = TurnMachine, TurnPhase, ev.Timer
    table: dict[tuple[TurnPhase | None, Key], Row[TurnPhase]] = {
        # the question
        (P.IDLE, ev.Pressed): row(M._on_press_idle, P.LISTENING, P.IDLE),
        (P.LISTENING, ev.Pressed): row(M._on_press_held),
        (P.WAITING, ev.Pressed): row(M._on_barge_in, P.LISTENING),
        (P.SPEAKING, ev.Pressed): row(M._on_barge_in, P.LISTENING),
        (P.LISTENING, ev.Released): row(M._on_release_listening, P.WAITING, P.IDLE),
        (ANY, ev.Released): row(M._on_release_elsewhere),
        (P.IDLE, ev.MicBlock): row(M._on_mic_idle),
        (P.LISTENING, ev.MicBlock): row(M._on_mic_listening),
        (ANY, ev.MicBlock): row(M._on_mic_dropped),
        (P.LISTENING, T.HOLD_CAP): row(M._on_hold_cap, P.WAITING, P.IDLE),
        # the reply
        (ANY, ev.ResponseCreated): row(M._on_response_created),
        (P.WAITING, ev.AudioDelta): row(M._on_delta, P.SPEAKING, P.WAITING),
        (P.SPEAKING, ev.AudioDelta): row(M._on_delta),
        (P.SPEAKING, ev.AudioDone): row(M._on_audio_done),
        (P.WAITING, ev.ResponseDone): row(M._on_response_done_waiting, P.WAITING, P.IDLE),
        (P.SPEAKING, ev.ResponseDone): row(M._on_response_done_speaking, P.SPEAKING, P.WAITING, P.IDLE),
        (ANY, ev.ResponseDone): row(M._on_response_done_elsewhere),
        (P.WAITING, T.THINKING_CUE): row(M._on_thinking_cue),
        (P.SPEAKING, ev.PlaybackDrained): row(M._on_drained, P.SPEAKING, P.WAITING, P.IDLE),
        (ANY, ev.PlaybackDrained): row(M._on_drained_elsewhere),
        (ANY, ev.PlaybackStarted): row(M._on_started),
        (ANY, ev.Played): row(M._on_played),
        (ANY, T.USAGE_WAIT): row(M._on_usage_wait),
        (ANY, ev.ItemAdded): row(M._on_item_added),
        (ANY, ev.Spent): row(M._on_spent),
        (P.IDLE, T.NEW_VISITOR): row(M._on_new_visitor),
        # tools
        (P.WAITING, ev.ToolCall): row(M._on_tool_call),
        (P.SPEAKING, ev.ToolCall): row(M._on_tool_call, P.SPEAKING, P.WAITING),
        (ANY, ev.ToolCall): row(M._on_stale_call),
        (P.WAITING, ev.ToolResult): row(M._on_tool_result),
        (P.SPEAKING, ev.ToolResult): row(M._on_tool_result, P.SPEAKING, P.WAITING),
        (ANY, ev.ToolResult): row(M._on_tool_result),
        # caps and failures
        (P.WAITING, T.REPLY_WAIT): row(M._on_reply_wait, P.IDLE),
        (P.SPEAKING, T.REPLY_CAP): row(M._on_reply_cap, P.IDLE),
        (P.SPEAKING, T.REPLY_WAIT): row(M._on_done_overdue, P.IDLE),
        (ANY, ev.ServerError): row(M._on_server_error),
        (P.WAITING, ev.ServerError): row(M._on_server_error, P.WAITING, P.IDLE),
        (P.IDLE, ev.Availability): row(M._on_availability),
        # the kiosk around the turn
        (ANY, ev.Reloaded): row(M._on_reloaded),
        (ANY, ev.SpeakerReopenDue): row(M._on_reopen_due),
    }
    for phase in IN_TURN:  # a backend lost mid-turn ends the turn
        table[(phase, ev.Availability)] = row(M._on_availability, P.IDLE, phase)
    return table


TurnMachine.TABLE = _table()
