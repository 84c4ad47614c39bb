"""The kiosk: the link machine and the turn machine coupled, and the one public phase derived from both.

Theory of operation (after h11's ``ConnectionState``, which couples a client and a server machine). Each input
goes to the machine whose table it belongs to (a ``ResponseCreated`` to both; a server error to the link if it
ends the session, else to the turn). After every input the coupling fires the transitions one machine's state
triggers in the other: the link becoming ready or going down is an ``Availability`` input to the turn (a turn
under way when the link drops ends there), and the turn coming back to idle is a ``TurnEnded`` input to the link
(which renews a session only between visitors, once the session owes no usage). The public phase, what the LED, the microphone gate, ``kioskctl
status`` and systemd see, is the turn's phase during a turn and the link's otherwise:

    turn idle + link ready (or the fallback answering while it connects) → IDLE;  turn idle + link connecting /
    offline / fault → that;  else the turn's phase

Only this module turns a public phase into an LED pattern, a microphone gate and systemd's READY. Every action
list the core returns leaves through ``_bounded``: the notes a server can cause are rate-limited and every
note's fields are cut to a few hundred characters (``core/bound.py``), whichever machine made them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Final

from kioskd.core import events as ev
from kioskd.core.bound import NoteLimiter, cut_note
from kioskd.core.link import LinkMachine, LinkPhase
from kioskd.core.settings import Settings
from kioskd.core.turn import TurnMachine
from kioskd.core.turnphase import TurnPhase


class Phase(str, Enum):
    CLOSED = "closed"
    CONNECTING = "connecting"
    OFFLINE = "offline"
    FAULT = "fault"
    IDLE = "idle"
    LISTENING = "listening"
    WAITING = "waiting"
    SPEAKING = "speaking"


LED: Final = {
    Phase.CLOSED: ev.Led.CLOSED, Phase.CONNECTING: ev.Led.OFFLINE, Phase.OFFLINE: ev.Led.OFFLINE, Phase.FAULT: ev.Led.ERROR,
    Phase.IDLE: ev.Led.IDLE, Phase.LISTENING: ev.Led.LISTENING, Phase.WAITING: ev.Led.THINKING,
    Phase.SPEAKING: ev.Led.SPEAKING,
}
#: phases in which the kiosk answers a press (with a reply or the offline prompt): systemd's READY
SERVING: Final = frozenset({Phase.IDLE, Phase.OFFLINE, Phase.FAULT, Phase.CLOSED})
LINK_TIMERS: Final = frozenset({ev.Timer.CONNECT, ev.Timer.RECONNECT, ev.Timer.RECYCLE})
LINK_INPUTS: Final = (ev.Connected, ev.Disconnected, ev.SessionCreated, ev.SessionUpdated, ev.Reloaded,
                      ev.ResponseCreated, ev.BadEvent, ev.Unknown, ev.UplinkBacklog)
TURN_INPUTS: Final = (
    ev.Pressed, ev.Released, ev.MicBlock, ev.Played, ev.PlaybackDrained, ev.PlaybackStarted, ev.InputCommitted,
    ev.ResponseCreated, ev.AudioDelta, ev.AudioDone, ev.TranscriptDone, ev.ResponseDone, ev.ItemTruncated,
    ev.ServerEvent, ev.Reloaded, ev.SpeakerReopenDue, ev.ToolCall, ev.ToolResult, ev.ItemAdded, ev.Spent,
    ev.Availability,  # the fallback's own (the Realtime one is the coupling's, from the link's phase)
)
#: kioskd bugs tolerated in-process within BUG_WINDOW_S; one more and the process exits for systemd to restart
BUG_LIMIT: Final = 3
BUG_WINDOW_S: Final = 600.0


class Kiosk:
    """Both machines. ``begin(now)`` starts, ``handle(input, now)`` advances, ``recover(now)`` replaces the
    machines after a kioskd bug."""

    def __init__(self, settings: Settings, *, rand: Callable[[], float],
                 draw: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self._rand = rand  # the link's backoff jitter
        self._draw = draw or rand  # each new visitor's A/B draw
        self.link = LinkMachine(settings.link, rand=rand)
        self.turn = TurnMachine(settings.turn, rand=self._draw)
        self._told: tuple[bool, str, str] = (False, "connecting", "")  # what the turn last heard (its belief)
        self._published: Phase | None = None
        self._stuck_shown = False
        self._serving = False
        self._bugs: list[float] = []
        self._limiter = NoteLimiter()  # outlives the machines: a bug that replaces them resets no count

    @property
    def phase(self) -> Phase:
        if self.turn.phase is not TurnPhase.IDLE:
            return Phase(self.turn.phase.value)
        if self.turn.closed:
            return Phase.CLOSED
        if self.link.phase is LinkPhase.READY:
            return Phase.IDLE
        if self.link.phase is not LinkPhase.FAULT and self.turn.serving:  # the fallback answers meanwhile
            return Phase.IDLE
        return Phase(self.link.phase.value)  # a fault shows (the error LED) even while the fallback answers

    def begin(self, now: float) -> list[ev.Action]:
        self.link.model = self.turn.wanted_model
        return self._bounded([*self.link.begin(now), *self._sync(now, busy_was=False)], now)

    def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
        if isinstance(inp, ev.Timeout) and inp.timer is ev.Timer.LOG_SUMMARY:
            return self._bounded(self._limiter.summary(now), now)
        busy_was = self.turn.busy
        out: list[ev.Action] = []
        if isinstance(inp, ev.Timeout):
            out += self._link(inp, now) if inp.timer in LINK_TIMERS else self.turn.handle(inp, now)
        elif isinstance(inp, ev.ServerError):
            out += self._link(inp, now) if self.link.claims(inp) else self.turn.handle(inp, now)
        else:
            if isinstance(inp, LINK_INPUTS) and getattr(inp, "backend", "realtime") == "realtime":
                out += self._link(inp, now)
            if isinstance(inp, TURN_INPUTS):
                out += self.turn.handle(inp, now)
        if isinstance(inp, ev.Reloaded):
            self.settings = inp.settings
        out += self._sync(now, busy_was)
        if isinstance(inp, ev.Pressed) and not any(isinstance(a, ev.SetMic) for a in out):
            out.append(ev.SetMic(_mic(self.phase)))  # the adapter opened the microphone as the press was queued
        return self._bounded(out, now)

    def recover(self, now: float, cause: BaseException) -> list[ev.Action]:
        """After a kioskd bug (an exception from ``handle``): account the turns the old machines still held,
        then start fresh machines — the link's backoff goes on, so a bug every session triggers is no reconnect
        storm. BUG_LIMIT bugs within BUG_WINDOW_S: exit for systemd to start a fresh process."""
        self._bugs = [t for t in self._bugs if now - t < BUG_WINDOW_S] + [now]
        out: list[ev.Action] = []
        try:
            out += self.turn.abandon(now, f"kioskd bug: {type(cause).__name__}")
        except Exception:  # the machine that just failed may fail again: its turns are then lost to the log
            pass
        if len(self._bugs) >= BUG_LIMIT:
            reason = f"{len(self._bugs)} kioskd bugs within {BUG_WINDOW_S:.0f} s"
            return self._bounded([*out, ev.Interrupt(), ev.Note("daemon.bug_limit", "error", {"cause": reason}),
                                  ev.Exit(1, reason)], now)
        self.link = LinkMachine(self.settings.link, rand=self._rand, carry=self.link)
        self.turn = TurnMachine(self.settings.turn, rand=self._draw)
        self._told = (False, "connecting", "")
        apology = [ev.PlayEarcon(ev.Earcon.APOLOGY)] if self.settings.turn.earcons else []
        # the fresh turn machine routes to the Realtime link and knows nothing the fallback holds: it is reset too
        restart: list[ev.Action] = [ev.Interrupt(), *apology, ev.Close(), ev.Route("realtime"), ev.ResetFallback()]
        return [*self._bounded([*out, *restart], now), *self.begin(now)]

    def status(self) -> dict[str, Any]:
        """A snapshot for ``kioskctl status`` (plain data)."""
        return {"phase": self.phase.value, "link": self.link.phase.value, "turn": self.turn.phase.value,
                "session_model": self.link.session_model if self.link.phase is LinkPhase.READY else None,
                **self.turn.arms_status,
                "button_stuck": self.turn.stuck_since_s is not None, "last_turn": self.turn.last_turn}

    # ------------------------------------------------------------------------------------------ coupling

    def _bounded(self, actions: list[ev.Action], now: float) -> list[ev.Action]:
        """What the core says, bounded: server-caused notes held back over their rate, every note's fields cut."""
        return [cut_note(a) if isinstance(a, ev.Note) else a for a in self._limiter.limit(actions, now)]

    def _link(self, inp: ev.Input, now: float) -> list[ev.Action]:
        self.link.turn_busy = self.turn.busy
        return self.link.handle(inp, now)

    def _sync(self, now: float, busy_was: bool) -> list[ev.Action]:
        """Fire the transitions one machine's state triggers in the other, then publish the public phase. The
        turn is over for the link once it is idle and its session owes it no usage (renewing the session sooner
        would lose the usage of a reply cancelled by a barge-in)."""
        out = self._tell(now)
        if busy_was and not self.turn.busy:
            out += self._link(ev.TurnEnded(answered=self.turn.last_outcome == "answered"), now)
            out += self._tell(now)  # the turn's end may have renewed the session
        self.link.turn_busy = self.turn.busy
        wanted = self.link.want(self.turn.wanted_model, now)  # another model for the next visitor: renew between
        if wanted:
            out += wanted + self._tell(now)
        return out + self._publish()

    def _tell(self, now: float) -> list[ev.Action]:
        """An ``Availability`` for the turn whenever the link came up, went down, or is down for another reason
        (offline → connecting → fault): a refused press names the link's phase as it is now."""
        avail = self._availability()
        if (avail.up, avail.reason, avail.model) == self._told:
            return []
        self._told = (avail.up, avail.reason, avail.model)
        return self.turn.handle(avail, now)

    def _availability(self) -> ev.Availability:
        up = self.link.phase is LinkPhase.READY
        return ev.Availability("realtime", up, "" if up else self.link.phase.value, self.link.last_error,
                               self.link.session_model if up else "")

    def _publish(self) -> list[ev.Action]:
        phase, stuck = self._published, self.turn.stuck_since_s is not None
        now_phase = self.phase
        if now_phase is phase:
            if stuck is not self._stuck_shown:  # a jammed button shows the error LED whatever the phase
                self._stuck_shown = stuck
                return [ev.SetLed(ev.Led.ERROR if stuck else LED[now_phase])]
            return []
        self._published, self._stuck_shown = now_phase, stuck
        self._serving = self._serving or now_phase in SERVING
        fields = {"from": phase.value if phase is not None else None, "to": now_phase.value}
        led = ev.Led.ERROR if stuck else LED[now_phase]
        return [ev.Note("turn.phase", "info", fields), ev.SetLed(led), ev.SetMic(_mic(now_phase)),
                ev.Publish(now_phase.value, self._serving)]


def _mic(phase: Phase) -> ev.Mic:
    return ev.Mic.LIVE if phase is Phase.LISTENING else ev.Mic.PREROLL if phase is Phase.IDLE else ev.Mic.OFF


def diagram() -> str:
    """Both machines' tables and how the public phase is derived: what ``scripts/state-diagram`` prints and the
    README shows (a test keeps the two in step)."""
    from kioskd.core.link import LinkPhase
    from kioskd.core.table import render

    derived = ("public phase = the turn's phase during a turn; between turns: closed if the day's budget is "
               "spent, else idle if the link is ready (or only offline or connecting while the fallback can "
               "answer), else the link's (connecting, offline, fault)")
    return "\n\n".join([
        render("link (core/link.py)", LinkMachine.TABLE, LinkPhase),
        render("turn (core/turn.py)", TurnMachine.TABLE, TurnPhase),
        derived,
    ])
