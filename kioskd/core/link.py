"""The link to the Realtime service: connecting, ready, offline, fault; the reconnect policy; session renewal.

Theory of operation. ``LinkMachine`` is one of the two machines ``core/kiosk.py`` couples (the other is the
visitor's turn, ``core/turn.py``). It opens a session (``Connect``), configures it (``ConfigureSession``) and is
READY once the service confirms; a lost session goes OFFLINE with the next jittered backoff delay, or to FAULT
when ``errors.classify`` says retrying cannot help (bad key, no quota, unknown model, a refused configuration, or
the quick-failure rule: sessions that die again and again within seconds of becoming ready). A server error
whose code is fatal but which names one request of a ready session (not its configuration) does not end the
session: ``claims`` leaves it to the turn. Sessions are renewed
a margin before the server's ``expires_at``, and after a reload that changed the session, but only while no
visitor is mid-turn (``turn_busy``, kept up to date by the coupling).

    CONNECTING ─SessionUpdated─► READY ─Timeout(recycle) / Reloaded (between visitors)─► CONNECTING
        ▲  └─Timeout(connect)─► OFFLINE     └─Disconnected─► OFFLINE (retry) / FAULT (fatal)
        └──── Timeout(reconnect) / Reloaded ◄── OFFLINE / FAULT
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import Enum
from typing import Final

from kioskd.core import events as ev
from kioskd.core.backoff import delays
from kioskd.core.settings import LinkSettings
from kioskd.core.table import ANY, Key, Machine, Row, row
from kioskd.errors import ServerRejected, classify

#: server error codes that are expected now and then and change nothing (reference §9.2)
BENIGN_CODES: Final = frozenset(
    {"response_cancel_not_active", "invalid_value", "conversation_already_has_active_response",
     "input_audio_buffer_commit_empty"}
)
#: the session lifetimes kioskd believes (seconds): outside this the local clock is wrong, not the server
LIFETIME_RANGE_S: Final = (30.0, 3600.0)
#: distinct (type, reason) pairs of bad server frames remembered for "said once" (then all are counted only);
#: the type is one kioskd parses and the reason kioskd's own word, so there are fewer than this in practice
BAD_KINDS_MAX: Final = 64
#: a bad event's type is cut to this many characters before it becomes a key
BAD_TYPE_KEY_CHARS: Final = 64


class LinkPhase(str, Enum):
    CONNECTING = "connecting"
    READY = "ready"
    OFFLINE = "offline"
    FAULT = "fault"


REMOTE: Final = (
    ev.Connected, ev.Disconnected, ev.SessionCreated, ev.SessionUpdated, ev.ServerError, ev.ResponseCreated,
    ev.UplinkBacklog,
)


class LinkMachine(Machine[LinkPhase]):
    """The session's lifecycle. ``begin(now)`` opens the first; ``handle(input, now)`` advances it.

    ``carry``: the machine this one replaces after a kioskd bug, whose backoff and quick-failure count go on
    (a bug that every session triggers must not become a reconnect storm)."""

    REMOTE = REMOTE

    def __init__(self, settings: LinkSettings, *, rand: Callable[[], float],
                 carry: LinkMachine | None = None) -> None:
        super().__init__(LinkPhase.OFFLINE)
        self.settings = settings
        self._rand = rand
        self._backoff: Iterator[float] = carry._backoff if carry is not None else self._new_backoff()
        self._quick_failures: int = carry._quick_failures if carry is not None else 0
        self._served = False  # the server started a response on this session: it works
        self._online_since_s: float | None = None
        self._lifetime_s: float | None = None
        self._config_ref: str | None = None
        self._configs = 0
        self._renew_due = False
        self._narrowed = False  # this session's uplink went to pcmu (audio.input_format auto)
        self._bad_seen: dict[tuple[str, str], int] = {}
        self.last_error = ""  # why the last session ended, for the turn it cost
        self.turn_busy = False  # set by the coupling: a visitor is mid-turn, so no renewal now
        self.model = ""  # the model sessions open with ("": the URL's own); the coupling sets it (``want``)
        self.session_model = ""  # the model of the session that is (or was last) READY
        self._opening_model = ""

    def begin(self, now: float) -> list[ev.Action]:
        return self._connect(now)

    def claims(self, err: ev.ServerError) -> bool:
        """This server error ends the session (FAULT). While connecting: any error refusing the session's own
        configuration, or one whose code says retrying cannot help (``errors.classify``). While ready: a code
        that says so only if the error names the configuration or no client event at all (a key revoked, the
        quota gone); one that names another client event refuses that request, not the session, and is the
        turn's business (a warning; a turn it leaves without a reply ends as failed)."""
        names_config = err.event_id is not None and err.event_id == self._config_ref
        if self.phase is LinkPhase.CONNECTING and names_config:
            return True
        if err.code in BENIGN_CODES or self.phase not in (LinkPhase.CONNECTING, LinkPhase.READY):
            return False
        if self.phase is LinkPhase.READY and err.event_id is not None and not names_config:
            return False
        return classify(ServerRejected(err.code, err.message, err.event_id, err.error_type)) == "fatal"

    def ignore(self, inp: ev.Input) -> list[ev.Action]:
        return [ev.Note("ws.ignored", "debug", {"input": type(inp).__name__, "phase": self.phase.value})]

    # ------------------------------------------------------------------------------------------ helpers

    def _new_backoff(self) -> Iterator[float]:
        s = self.settings
        return delays(first_max_s=s.backoff_first_max_s, cap_s=s.backoff_cap_s, rand=self._rand)

    def _connect(self, now: float) -> list[ev.Action]:
        self.phase = LinkPhase.CONNECTING
        self._opening_model = self.model
        self._narrowed = False  # a new session starts wide again: the link may have recovered
        return [ev.Connect(self.model), self.arm(ev.Timer.CONNECT, now + self.settings.connect_timeout_s)]

    def want(self, model: str, now: float) -> list[ev.Action]:
        """The next visitor needs ``model`` (the coupling asks after every input): a session running another is
        renewed, between visitors; one opening or down opens with it next."""
        if model == self.model:
            return []
        out: list[ev.Action] = [ev.Note("ws.model_switch", "info", {"from": self.model, "to": model})]
        self.model = model
        if self.phase in (LinkPhase.READY, LinkPhase.CONNECTING):
            self._renew_due = True
        if self.phase is LinkPhase.READY and not self.turn_busy:
            out += self._renew(now)
        return out

    def _renew(self, now: float) -> list[ev.Action]:
        self._renew_due = False
        if self._online_since_s is not None and now - self._online_since_s >= self.settings.healthy_after_s:
            self._backoff = self._new_backoff()
        self._online_since_s = None  # the next session is judged on its own (quick failures, health)
        self.last_error = "session renewed"
        return [*self.disarm_all(), ev.Note("ws.recycle", "info"), ev.Close(), *self._connect(now)]

    def _down(self, cause: BaseException, now: float, *, fatal: bool = False) -> list[ev.Action]:
        """CONNECTING or READY → OFFLINE (retry with backoff) or FAULT (fatal: slow retry, error LED)."""
        verdict = "fatal" if fatal else classify(cause)
        if self._online_since_s is not None:
            quick = not self._served and now - self._online_since_s < self.settings.quick_failure_s
            self._quick_failures = self._quick_failures + 1 if quick else 0
            if self._quick_failures >= self.settings.quick_failures_fatal:
                verdict = "fatal"  # it connects, then dies at once, again and again
            if now - self._online_since_s >= self.settings.healthy_after_s:
                self._backoff = self._new_backoff()
        self._online_since_s = None
        self.last_error = f"{type(cause).__name__}: {cause}"
        fields = {"error": str(cause), "error_type": type(cause).__name__, "phase": self.phase.value}
        out = self.disarm_all()
        if verdict == "fatal":
            delay_s = self.settings.fault_retry_s
            out += [ev.Note("ws.fault", "error", {**fields, "retry_in_s": delay_s}), ev.Close()]
            self.phase = LinkPhase.FAULT
        else:
            delay_s = next(self._backoff)
            out.append(ev.Note("ws.disconnected", "warning", {**fields, "retry_in_s": round(delay_s, 2)}))
            self.phase = LinkPhase.OFFLINE
        return [*out, self.arm(ev.Timer.RECONNECT, now + delay_s)]

    # ------------------------------------------------------------------------------------------ rows

    def _on_session_created(self, inp: ev.SessionCreated, now: float) -> list[ev.Action]:
        s = self.settings
        self._configs += 1
        self._config_ref = f"cfg_{self._configs}"
        out: list[ev.Action] = [ev.Note("ws.session_created", "info", {"session_id": inp.session_id})]
        low_s, high_s = LIFETIME_RANGE_S
        lifetime_s = inp.expires_in_s
        if lifetime_s is not None and not low_s <= lifetime_s <= high_s:
            out.append(ev.Note("ws.clock_skew", "warning", {"expires_in_s": round(lifetime_s), "assumed_s": high_s}))
            lifetime_s = high_s
        self._lifetime_s = lifetime_s
        return [*out, self._configure()]

    def _configure(self) -> ev.ConfigureSession:
        s = self.settings
        return ev.ConfigureSession(self._config_ref or "", s.voice, s.instructions, s.tools, s.context_tokens,
                                   s.max_output_tokens, s.uplink_format(self._narrowed))

    def _on_session_updated(self, inp: ev.SessionUpdated, now: float) -> list[ev.Action]:
        out = self.disarm(ev.Timer.CONNECT)
        if inp.turn_detection is not None:
            out.append(ev.Note("ws.session_mismatch", "warning", {"turn_detection": inp.turn_detection}))
        self._online_since_s = now
        self._served = False
        self.phase = LinkPhase.READY
        self.session_model = self._opening_model
        if self._lifetime_s is not None:
            lifetime_s = self._lifetime_s
            at_s = now + max(lifetime_s / 2, lifetime_s - self.settings.recycle_margin_s)
            out.append(self.arm(ev.Timer.RECYCLE, at_s))
        out.append(ev.Note("ws.ready", "info"))
        if self._renew_due and not self.turn_busy:  # a reload changed the session while this one was opening
            out += self._renew(now)
        return out

    def _on_connect_timeout(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        delay_s = next(self._backoff)
        self.last_error = f"no configured session within {self.settings.connect_timeout_s:g} s"
        self.phase = LinkPhase.OFFLINE
        return [ev.Note("ws.connect_timeout", "warning",
                        {"timeout_s": self.settings.connect_timeout_s, "retry_in_s": round(delay_s, 2)}),
                ev.Close(), self.arm(ev.Timer.RECONNECT, now + delay_s)]

    def _on_reconnect(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        return self._connect(now)

    def _on_disconnected(self, inp: ev.Disconnected, now: float) -> list[ev.Action]:
        return self._down(inp.cause, now)

    def _on_fatal_error(self, inp: ev.ServerError, now: float) -> list[ev.Action]:
        cause = ServerRejected(inp.code, inp.message, inp.event_id, inp.error_type)
        return self._down(cause, now, fatal=True)

    def _on_recycle(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        if self.turn_busy:
            self._renew_due = True  # never cut a visitor's turn: renew on the way back to idle
            return []
        return self._renew(now)

    def _on_turn_ended(self, inp: ev.TurnEnded, now: float) -> list[ev.Action]:
        if inp.answered:  # a session that answered a visitor in full is healthy
            self._backoff = self._new_backoff()
            self._quick_failures = 0
        return self._renew(now) if self._renew_due and self.phase is LinkPhase.READY else []

    def _on_reload(self, inp: ev.Reloaded, now: float) -> list[ev.Action]:
        changed = inp.settings.link.session != self.settings.session
        self.settings = inp.settings.link
        if self.phase in (LinkPhase.OFFLINE, LinkPhase.FAULT):  # perhaps a rotated credential: try again now
            self._quick_failures = 0
            self._backoff = self._new_backoff()
            return [*self.disarm(ev.Timer.RECONNECT), ev.Note("ws.reconnect_on_reload", "info"),
                    *self._connect(now)]
        self._renew_due = self._renew_due or changed
        if self.phase is LinkPhase.READY and self._renew_due and not self.turn_busy:
            return self._renew(now)
        return []

    def _on_response_created(self, inp: ev.ResponseCreated, now: float) -> list[ev.Action]:
        self._served = True
        return []

    def _on_backlog(self, inp: ev.UplinkBacklog, now: float) -> list[ev.Action]:
        """``auto``: a question still far from the server at release narrows this session's uplink to G.711 (a
        sixth of the bytes), by a session.update the turn never waits for; the next session starts wide."""
        s = self.settings
        if s.input_format != "auto" or self._narrowed or inp.backlog_ms < s.narrow_backlog_ms:
            return []
        self._narrowed = True
        self._configs += 1
        self._config_ref = f"cfg_{self._configs}"
        return [ev.Note("ws.uplink_narrowed", "warning", {"backlog_ms": inp.backlog_ms, "input_format": "pcmu"}),
                self._configure()]

    def _on_bad_event(self, inp: ev.BadEvent, now: float) -> list[ev.Action]:
        """One warning per kind, (type, reason), for at most BAD_KINDS_MAX kinds; repeats are debug, counted.
        The detail (which may quote the server) is logged but never part of the kind."""
        key = (inp.event_type[:BAD_TYPE_KEY_CHARS], inp.reason)
        fields = {"type": key[0], "reason": inp.reason, "detail": inp.detail}
        if key not in self._bad_seen and len(self._bad_seen) >= BAD_KINDS_MAX:
            return [ev.Note("ws.bad_event", "debug", fields)]
        seen = self._bad_seen[key] = self._bad_seen.get(key, 0) + 1
        return [ev.Note("ws.bad_event", "warning" if seen == 1 else "debug", {**fields, "count": seen})]

    def _on_unknown(self, inp: ev.Unknown, now: float) -> list[ev.Action]:
        return [ev.Note("ws.unknown_event", "debug", {"type": inp.type})]


def _table() -> dict[tuple[LinkPhase | None, Key], Row[LinkPhase]]:
    M, P, T = LinkMachine, LinkPhase, ev.Timer
    table: dict[tuple[LinkPhase | None, Key], Row[LinkPhase]] = {
        (P.CONNECTING, ev.SessionCreated): row(M._on_session_created),
        (P.CONNECTING, ev.SessionUpdated): row(M._on_session_updated, P.READY, P.CONNECTING),
        (P.CONNECTING, T.CONNECT): row(M._on_connect_timeout, P.OFFLINE),
        (P.OFFLINE, T.RECONNECT): row(M._on_reconnect, P.CONNECTING),
        (P.FAULT, T.RECONNECT): row(M._on_reconnect, P.CONNECTING),
        (P.READY, T.RECYCLE): row(M._on_recycle, P.READY, P.CONNECTING),
        (P.CONNECTING, ev.Disconnected): row(M._on_disconnected, P.OFFLINE, P.FAULT),
        (P.READY, ev.Disconnected): row(M._on_disconnected, P.OFFLINE, P.FAULT),
        (P.CONNECTING, ev.ServerError): row(M._on_fatal_error, P.FAULT),
        (P.READY, ev.ServerError): row(M._on_fatal_error, P.FAULT),
        (P.OFFLINE, ev.Reloaded): row(M._on_reload, P.CONNECTING),
        (P.FAULT, ev.Reloaded): row(M._on_reload, P.CONNECTING),
        (P.CONNECTING, ev.Reloaded): row(M._on_reload),
        (P.READY, ev.Reloaded): row(M._on_reload, P.READY, P.CONNECTING),
        (P.READY, ev.TurnEnded): row(M._on_turn_ended, P.READY, P.CONNECTING),
        (P.READY, ev.UplinkBacklog): row(M._on_backlog),
        (ANY, ev.TurnEnded): row(M._on_turn_ended),
        (ANY, ev.ResponseCreated): row(M._on_response_created),
        (ANY, ev.BadEvent): row(M._on_bad_event),
        (ANY, ev.Unknown): row(M._on_unknown),
    }
    return table


LinkMachine.TABLE = _table()
