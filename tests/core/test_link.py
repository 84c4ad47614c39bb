"""The link to the service (``LinkMachine``), its coupling in ``Kiosk``, recovery after a kioskd bug, and the
contract every machine's table keeps (``core/table.py``).

Connection behaviour is driven through ``Kiosk`` on a fake clock (so LEDs and the turn's view are asserted too);
the link's rows and ``claims`` are also checked on a bare ``LinkMachine``. ``rand`` is 0.5, so the backoff runs
0.5, 1.75, 3.5 s.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import pytest

from kioskd.core import events as ev
from kioskd.core.kiosk import BUG_WINDOW_S
from kioskd.core.link import LinkMachine
from kioskd.core.settings import LinkSettings, Settings
from kioskd.core.table import Machine, row
from kioskd.errors import AuthError, ConnectionLost, LocalProtocolError
from tests.core.drive import (
    LINK, SETTINGS, Driver, arms, ask, delta, done, earcons, kinds, leds, note, note_names, notes, online, reconnect,
    said, speaking, then_played, usage_of,
)

FAULT_RETRY_S = LINK.fault_retry_s


def connecting() -> Driver:
    d = Driver()
    d.begin()
    return d


def with_link(**changes: Any) -> Settings:
    fields = {"voice": LINK.voice, "instructions": LINK.instructions, **changes}
    return Settings(link=LinkSettings(**fields), turn=SETTINGS.turn)


def drop(d: Driver, cause: BaseException, online_for_s: float) -> float:
    """Stay online for ``online_for_s``, drop, reconnect; return the reconnect delay the drop armed."""
    out = d.feed(ev.Disconnected(cause), after_s=online_for_s)
    delay_s = arms(out)[ev.Timer.RECONNECT] - d.now
    reconnect(d, after_s=delay_s)
    return delay_s


# ================================================================================================ connecting


def test_begin_connects_and_arms_connect_timeout() -> None:
    """begin → Connect, Arm(connect) at now + connect timeout, LED offline; phase CONNECTING."""
    d = Driver()
    out = d.begin()
    assert kinds(out) == ["Connect", "Arm", "SetLed"]
    assert leds(out) == [ev.Led.OFFLINE]
    assert arms(out) == {ev.Timer.CONNECT: d.now + LINK.connect_timeout_s}
    assert d.status() == {"phase": "connecting", "link": "connecting", "turn": "idle", "session_model": None,
                          "visitor": None, "fallback": None, "degraded": False, "button_stuck": False,
                          "last_turn": None}


def test_session_created_configures_the_session() -> None:
    """SessionCreated → one ConfigureSession with a ref, the voice and the instructions; still CONNECTING."""
    d = connecting()
    out = d.feed(ev.SessionCreated("sess_1", None), after_s=0.2)
    assert said(out) == [ev.ConfigureSession("cfg_1", "cedar", "You are the voice of exhibit 12.")]
    assert note(out, "ws.session_created").fields == {"session_id": "sess_1"}
    assert d.phase == "connecting"


def test_session_updated_goes_idle() -> None:
    """SessionUpdated (no turn detection) → IDLE, LED idle, connect timer disarmed, no recycle without a deadline."""
    d = connecting()
    d.feed(ev.SessionCreated("sess_1", None))
    out = d.feed(ev.SessionUpdated(turn_detection=None), after_s=0.1)
    assert ev.Disarm(ev.Timer.CONNECT) in out
    assert kinds(out) == ["SetLed"] and leds(out) == [ev.Led.IDLE]
    assert "ws.ready" in note_names(out)
    assert d.status()["phase"] == "idle" and d.status()["link"] == "ready"
    assert d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=LINK.connect_timeout_s) == []


def test_session_updated_with_server_vad_warns() -> None:
    """SessionUpdated still showing server_vad → a warning note (the configuration did not take)."""
    d = connecting()
    d.feed(ev.SessionCreated("sess_1", None))
    assert note(d.feed(ev.SessionUpdated({"type": "server_vad"})), "ws.session_mismatch").level == "warning"


def test_connect_timeout_closes_and_arms_reconnect() -> None:
    """Timeout(connect) → Close, OFFLINE, LED offline, Arm(reconnect) after the first backoff delay (0.5 s)."""
    d = connecting()
    out = d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=LINK.connect_timeout_s)
    assert kinds(out) == ["Close", "Arm", "SetLed"]
    assert leds(out) == [ev.Led.OFFLINE]
    assert arms(out) == {ev.Timer.RECONNECT: pytest.approx(d.now + 0.5)}
    assert note(out, "ws.connect_timeout").level == "warning"
    assert d.status()["phase"] == "offline" and d.status()["link"] == "offline"


def test_reconnect_timeout_connects_again_with_growing_delays() -> None:
    """Timeout(reconnect) → CONNECTING (Connect, Arm(connect)); connect timeouts back off 0.5, 1.75, 3.5 s."""
    d = connecting()
    delays = []
    for _ in range(3):
        out = d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=LINK.connect_timeout_s)
        delays.append(arms(out)[ev.Timer.RECONNECT] - d.now)
        out = d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=delays[-1])
        assert kinds(out) == ["Connect", "Arm", "SetLed"]
        assert arms(out) == {ev.Timer.CONNECT: d.now + LINK.connect_timeout_s}
        assert d.phase == "connecting"
    assert delays == pytest.approx([0.5, 1.75, 3.5])


def test_disconnect_while_connecting_goes_offline() -> None:
    """Disconnected while CONNECTING (handshake failed) → OFFLINE, connect timer disarmed, reconnect armed."""
    d = connecting()
    out = d.feed(ev.Disconnected(OSError("connection refused")))
    assert ev.Disarm(ev.Timer.CONNECT) in out and ev.Timer.RECONNECT in arms(out)
    assert d.phase == "offline"
    assert d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=10.0) == []


@pytest.mark.parametrize(("expires_in_s", "recycle_after_s", "skew"), [
    (3600.0, 3600.0 - LINK.recycle_margin_s, False),
    (60.0, 30.0, False),  # shorter than the margin: still before expiry, but not at once
    (-500.0, 3600.0 - LINK.recycle_margin_s, True),  # a local clock far off: assume 60 min and say so
    (1e7, 3600.0 - LINK.recycle_margin_s, True),
])
def test_recycle_is_armed_before_expiry(expires_in_s: float, recycle_after_s: float, skew: bool) -> None:
    """A known lifetime arms recycle a margin before it (half of a short one); an implausible one is clamped."""
    d = connecting()
    out = d.feed(ev.SessionCreated("sess_1", 2e9, expires_in_s=expires_in_s))
    assert bool(notes(out, "ws.clock_skew")) == skew
    out = d.feed(ev.SessionUpdated(None), after_s=0.2)
    assert arms(out) == {ev.Timer.RECYCLE: pytest.approx(d.now + recycle_after_s)}


# ================================================================================================ recycle, reload


def test_recycle_in_idle_renews_the_session() -> None:
    """Timeout(recycle) in IDLE → Close, Connect, Arm(connect); the new session is configured with a new ref."""
    d = online(expires_in_s=3600.0)
    out = d.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=3600.0 - LINK.recycle_margin_s)
    assert kinds(out) == ["Close", "Connect", "Arm", "SetLed"]
    assert arms(out) == {ev.Timer.CONNECT: d.now + LINK.connect_timeout_s}
    assert "ws.recycle" in note_names(out)
    assert d.phase == "connecting"
    assert said(d.feed(ev.SessionCreated("sess_2", None))) == [ev.ConfigureSession("cfg_2", "cedar",
                                                                                   LINK.instructions)]


def finish_too_short(d: Driver) -> list[ev.Action]:
    return d.release()


def finish_reply_wait(d: Driver) -> list[ev.Action]:
    """The reply never starts; the cancelled request is waited for (``usage_wait_s``), then given up."""
    d.mic(300)
    d.release()
    out = d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=SETTINGS.turn.reply_wait_s)
    assert d.phase == "idle" and ev.Close() not in out and not notes(out, "turn.done")
    return d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=SETTINGS.turn.usage_wait_s)


def finish_capped(d: Driver) -> list[ev.Action]:
    """The reply is cut at its cap; the renewal waits for the cancelled response's usage, then goes ahead."""
    d.mic(300)
    d.release()
    speaking(d)
    out = then_played(d, d.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=SETTINGS.turn.reply_cap_s), 1200)
    assert d.phase == "idle" and ev.Close() not in out and not notes(out, "turn.done")
    return d.feed(done("resp_1", "cancelled", usage_of(321)), after_s=0.3)


def finish_answered(d: Driver) -> list[ev.Action]:
    d.mic(300)
    d.release()
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    return d.feed(ev.PlaybackDrained(0), after_s=1.2)


@pytest.mark.parametrize("finish", [finish_too_short, finish_reply_wait, finish_capped, finish_answered])
def test_recycle_during_a_turn_waits_for_idle_and_the_usage_owed(finish: Any) -> None:
    """Timeout(recycle) mid-turn changes nothing; the session is renewed once the turn is back in idle and the
    session owes it no usage (renewing sooner would lose a cancelled reply's bill)."""
    d = online(expires_in_s=600.0)
    d.press(after_s=1.0)
    d.mic(40)
    assert d.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=600.0) == []
    assert d.phase == "listening"
    out = finish(d)
    [line] = notes(out, "turn.done")
    if finish is finish_capped:
        assert line.fields["usage"] == usage_of(321) and "usage_missing" not in line.fields
    if finish is finish_reply_wait:
        assert line.fields["responses"] == 0  # never started: never billed
    assert kinds(out)[-4:] == ["Close", "Connect", "Arm", "SetLed"]
    assert d.phase == "connecting"


def test_reload_reconnects_from_fault_and_renews_a_changed_session_between_visitors() -> None:
    """Reloaded in FAULT (a rotated key) reconnects at once; in IDLE a changed voice renews the session, with the
    new voice; an unchanged one does not; mid-turn the renewal waits for IDLE."""
    d = online()
    d.feed(ev.Disconnected(AuthError("wss://x", 401)))
    out = d.feed(ev.Reloaded(SETTINGS), after_s=1.0)
    assert ev.Connect("gpt-realtime") in out and ev.Disarm(ev.Timer.RECONNECT) in out and d.phase == "connecting"
    d.feed(ev.SessionCreated("sess_2", None))
    d.feed(ev.SessionUpdated(None))
    assert d.feed(ev.Reloaded(SETTINGS)) == []
    out = d.feed(ev.Reloaded(with_link(voice="marin")))
    assert ev.Close() in out and ev.Connect("gpt-realtime") in out
    assert said(d.feed(ev.SessionCreated("sess_3", None))) == [ev.ConfigureSession("cfg_3", "marin",
                                                                                   LINK.instructions)]
    d.feed(ev.SessionUpdated(None))
    ask(d)
    assert d.feed(ev.Reloaded(with_link(voice="cedar"))) == []
    d.feed(ev.ResponseCreated("resp_1"))
    out = d.feed(done("resp_1", "failed"))
    assert ev.Connect("gpt-realtime") in out and d.phase == "connecting"


def test_reload_while_connecting_renews_once_ready() -> None:
    """A changed session reloaded while the old one is still opening is renewed as soon as that one is ready."""
    d = connecting()
    d.feed(ev.SessionCreated("sess_1", None))
    assert d.feed(ev.Reloaded(with_link(instructions="New words."))) == []
    out = d.feed(ev.SessionUpdated(None))
    assert ev.Close() in out and ev.Connect("gpt-realtime") in out and d.phase == "connecting"
    assert said(d.feed(ev.SessionCreated("sess_2", None))) == [ev.ConfigureSession("cfg_2", "cedar", "New words.")]


def test_a_reload_to_pcmu_renews_the_session_and_configures_it() -> None:
    """audio.input_format is a session setting: reloaded idle, the session is renewed and configured with it."""
    d = online()
    out = d.feed(ev.Reloaded(with_link(input_format="pcmu")))
    assert ev.Close() in out and ev.Connect("gpt-realtime") in out
    (configure,) = said(d.feed(ev.SessionCreated("sess_9", None)))
    assert isinstance(configure, ev.ConfigureSession) and configure.input_format == "pcmu"


def test_auto_narrows_the_uplink_once_a_question_falls_behind() -> None:
    """audio.input_format auto: pcm16 until a question is still narrow_backlog_ms from the server at release;
    then this session is reconfigured to pcmu (said once, as a warning), and the next session starts wide."""
    d = online(with_link(input_format="auto", narrow_backlog_ms=300))
    assert said(d.feed(ev.UplinkBacklog(299))) == [] and not note_names(d.feed(ev.UplinkBacklog(0)))
    out = d.feed(ev.UplinkBacklog(450))
    (configure,) = said(out)
    assert isinstance(configure, ev.ConfigureSession) and configure.input_format == "pcmu"
    assert note(out, "ws.uplink_narrowed").fields == {"backlog_ms": 450, "input_format": "pcmu"}
    assert note(out, "ws.uplink_narrowed").level == "warning"
    assert d.phase == "idle" and d.feed(ev.UplinkBacklog(900)) == []  # narrowed once a session
    d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=1.0)
    d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=0.5)
    (configure,) = said(d.feed(ev.SessionCreated("sess_2", None)))
    assert isinstance(configure, ev.ConfigureSession) and configure.input_format == "pcm16"


@pytest.mark.parametrize("fmt", ["pcm16", "pcmu"])
def test_a_fixed_input_format_is_never_narrowed(fmt: str) -> None:
    d = online(with_link(input_format=fmt))
    assert said(d.feed(ev.UplinkBacklog(5000))) == []


# ================================================================================================ backoff, faults


def test_backoff_grows_on_drops_and_resets_after_a_healthy_minute() -> None:
    """Drops back off 0.5, 1.75, 3.5 s; a drop after a healthy minute starts again at 0.5 s."""
    d = online()
    assert [drop(d, ConnectionLost(1011), 10.0) for _ in range(3)] == pytest.approx([0.5, 1.75, 3.5])
    assert drop(d, ConnectionLost(1011), LINK.healthy_after_s + 1) == pytest.approx(0.5)


def test_a_whole_answer_resets_the_backoff() -> None:
    """After drops grew the backoff, a session that answers a visitor in full starts the next backoff afresh."""
    d = online()
    assert [drop(d, ConnectionLost(1011), 10.0) for _ in range(2)] == pytest.approx([0.5, 1.75])
    ask(d)
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    d.feed(ev.PlaybackDrained())
    assert d.phase == "idle"
    assert drop(d, ConnectionLost(1011), 10.0) == pytest.approx(0.5)


def test_quick_failures_in_a_row_are_a_fault() -> None:
    """Sessions that die within quick_failure_s of being ready, three times in a row, mean a broken endpoint or
    config: FAULT with the error LED and the slow retry, not a fast loop."""
    d = online()
    assert drop(d, ConnectionLost(1011), 1.0) == pytest.approx(0.5)
    assert drop(d, ConnectionLost(1011), 1.0) == pytest.approx(1.75)
    out = d.feed(ev.Disconnected(ConnectionLost(1011)), after_s=1.0)
    assert d.phase == "fault" and leds(out) == [ev.Led.ERROR]
    assert arms(out)[ev.Timer.RECONNECT] == d.now + FAULT_RETRY_S


def test_a_renewal_that_fails_to_connect_is_not_the_old_sessions_quick_failure() -> None:
    """A reload renews a session 1 s after it became ready and the new connection fails before it is ready: no
    session died soon after being ready, so no quick failure is counted (two real ones after it stay below the
    rule's three)."""
    d = online()
    d.feed(ev.Reloaded(with_link(voice="marin")), after_s=1.0)
    assert d.phase == "connecting"
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=0.2)
    assert d.phase == "offline"
    reconnect(d, after_s=arms(out)[ev.Timer.RECONNECT] - d.now)
    drop(d, ConnectionLost(1011), 1.0)
    d.feed(ev.Disconnected(ConnectionLost(1011)), after_s=1.0)
    assert d.phase == "offline"


def test_a_session_that_served_a_response_is_not_a_quick_failure() -> None:
    """Drops mid-reply on sessions that did answer (a flaky link, not a broken endpoint) never add up to FAULT."""
    d = online()
    for n in range(4):
        ask(d)
        d.feed(ev.ResponseCreated(f"resp_{n}"))
        out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=1.0)
        assert d.phase == "offline"
        reconnect(d, after_s=arms(out)[ev.Timer.RECONNECT] - d.now)


def test_auth_error_goes_to_fault() -> None:
    """Disconnected(AuthError) mid-turn → FAULT, LED error, apology, reconnect only after the slow fault delay."""
    d = online()
    ask(d)
    out = d.feed(ev.Disconnected(AuthError("wss://api.openai.com/v1/realtime", 401)))
    assert leds(out) == [ev.Led.ERROR] and earcons(out) == [ev.Earcon.APOLOGY]
    assert arms(out) == {ev.Timer.RECONNECT: d.now + FAULT_RETRY_S}
    assert note(out, "ws.fault").level == "error"
    assert d.status()["phase"] == "fault" and d.status()["link"] == "fault"
    out = d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=FAULT_RETRY_S)
    assert kinds(out) == ["Connect", "Arm", "SetLed"] and d.phase == "connecting"


@pytest.mark.parametrize(("code", "event_id"), [
    ("unknown_parameter", "evt_3"),  # fatal whatever it names
    ("invalid_value", "cfg_1"),  # benign elsewhere, but it refuses our configuration (an unknown voice)
])
def test_a_refused_configuration_is_a_fault_not_a_retry_loop(code: str, event_id: str) -> None:
    """A fatal error while connecting, or any error naming ConfigureSession's ref → FAULT, error LED, slow retry."""
    d = connecting()
    d.feed(ev.SessionCreated("sess_1", None))
    out = d.feed(ev.ServerError(code, "Invalid value: 'robot'.", "invalid_request_error", event_id))
    assert d.phase == "fault"
    assert leds(out) == [ev.Led.ERROR] and "ws.fault" in note_names(out)
    assert arms(out)[ev.Timer.RECONNECT] == d.now + FAULT_RETRY_S


# ================================================================================================ the bare machine


def link_in(phase: str) -> LinkMachine:
    """A LinkMachine brought to ``phase`` by its own inputs (a session with a lifetime, so recycle is armed)."""
    m = LinkMachine(LINK, rand=lambda: 0.5)
    m.begin(0.0)
    if phase == "offline":
        m.handle(ev.Timeout(ev.Timer.CONNECT), 10.0)
    elif phase in ("ready", "fault"):
        m.handle(ev.SessionCreated("sess_1", 2e9, 3600.0), 0.1)
        m.handle(ev.SessionUpdated(None), 0.2)
        if phase == "fault":
            m.handle(ev.Disconnected(AuthError("wss://x", 401)), 100.0)
    assert m.phase.value == phase
    return m


CHANGED = with_link(voice="marin")
FATAL = ev.ServerError("invalid_api_key", "Incorrect API key", "invalid_request_error", None)
LINK_ROWS: list[tuple[str, ev.Input, str]] = [
    ("connecting", ev.SessionCreated("sess_1", None), "connecting"),
    ("connecting", ev.SessionUpdated(None), "ready"),
    ("connecting", ev.Timeout(ev.Timer.CONNECT), "offline"),
    ("connecting", ev.Disconnected(ConnectionLost(1006)), "offline"),
    ("connecting", ev.Disconnected(AuthError("wss://x", 401)), "fault"),
    ("connecting", FATAL, "fault"),
    ("connecting", ev.Reloaded(CHANGED), "connecting"),
    ("offline", ev.Timeout(ev.Timer.RECONNECT), "connecting"),
    ("offline", ev.Reloaded(SETTINGS), "connecting"),
    ("offline", ev.TurnEnded(answered=False), "offline"),
    ("offline", ev.Disconnected(ConnectionLost(1006)), "offline"),  # no row: remote, ignored
    ("offline", ev.BadEvent("(unparsed)", "not_json"), "offline"),
    ("fault", ev.Timeout(ev.Timer.RECONNECT), "connecting"),
    ("fault", ev.Reloaded(SETTINGS), "connecting"),
    ("ready", ev.Timeout(ev.Timer.RECYCLE), "connecting"),
    ("ready", ev.Disconnected(ConnectionLost(1006)), "offline"),
    ("ready", ev.Disconnected(AuthError("wss://x", 401)), "fault"),
    ("ready", FATAL, "fault"),
    ("ready", ev.Reloaded(SETTINGS), "ready"),
    ("ready", ev.Reloaded(CHANGED), "connecting"),
    ("ready", ev.TurnEnded(answered=True), "ready"),
    ("ready", ev.ResponseCreated("resp_1"), "ready"),
    ("ready", ev.Unknown("x"), "ready"),
    ("ready", ev.SessionUpdated(None), "ready"),  # no row: remote, ignored
]


@pytest.mark.parametrize(("start", "inp", "end"), LINK_ROWS,
                         ids=[f"{s}-{type(i).__name__}-{e}" for s, i, e in LINK_ROWS])
def test_link_rows(start: str, inp: ev.Input, end: str) -> None:
    """Each of the link's rows leads from its phase to the phase it declares."""
    m = link_in(start)
    m.handle(inp, 200.0)
    assert m.phase.value == end


def test_link_renews_only_between_visitors() -> None:
    """With turn_busy set, Timeout(recycle) and a changed reload wait; TurnEnded then renews the session."""
    m = link_in("ready")
    m.turn_busy = True
    assert m.handle(ev.Timeout(ev.Timer.RECYCLE), 3500.0) == []
    assert m.handle(ev.Reloaded(CHANGED), 3501.0) == []
    assert m.phase.value == "ready"
    m.turn_busy = False
    out = m.handle(ev.TurnEnded(answered=True), 3502.0)
    assert [type(a).__name__ for a in out if not isinstance(a, (ev.Note, ev.Disarm))] == ["Close", "Connect", "Arm"]
    assert m.phase.value == "connecting"


@pytest.mark.parametrize(("phase", "code", "event_id", "claimed"), [
    ("ready", "invalid_api_key", None, True),
    ("ready", "insufficient_quota", None, True),
    ("ready", "unknown_parameter", "cfg_1", True),  # a late refusal of the session's configuration
    ("ready", "unknown_parameter", "evt_5", False),  # refuses one request, not the session
    ("ready", "insufficient_quota", "req_1", False),
    ("ready", "server_error", None, False),
    ("ready", "conversation_already_has_active_response", "req_2", False),
    ("connecting", "invalid_value", "cfg_1", True),
    ("connecting", "invalid_value", "evt_9", False),
    ("connecting", "unknown_parameter", "evt_9", True),
    ("offline", "invalid_api_key", None, False),
])
def test_link_claims_errors_that_end_the_session(phase: str, code: str, event_id: str | None,
                                                 claimed: bool) -> None:
    """claims(): while connecting, fatal codes and refusals of the session's configuration are the link's; while
    ready, a fatal code only when it names the configuration or no client event; everything else the turn's."""
    m = link_in(phase)
    if phase == "connecting":
        m.handle(ev.SessionCreated("sess_1", None), 0.1)
    assert m.claims(ev.ServerError(code, "m", "invalid_request_error", event_id)) is claimed


# ================================================================================================ recover


def test_recover_keeps_the_backoff() -> None:
    """After recover() the next reconnect delay continues the backoff sequence instead of restarting it."""
    d = connecting()
    for _ in range(2):
        out = d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=LINK.connect_timeout_s)
        d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=arms(out)[ev.Timer.RECONNECT] - d.now)
    out = d.recover()
    assert kinds(out) == ["Interrupt", "PlayEarcon", "Close", "Route", "ResetFallback", "Connect", "Arm"]
    assert d.phase == "connecting"
    out = d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=LINK.connect_timeout_s)
    assert arms(out)[ev.Timer.RECONNECT] == pytest.approx(d.now + 3.5)  # 0.5, 1.75, then 3.5, not 0.5 again


def test_recover_keeps_the_quick_failure_count() -> None:
    """Quick failures before recover() count towards the fault after it."""
    d = online()
    drop(d, ConnectionLost(1011), 1.0)
    drop(d, ConnectionLost(1011), 1.0)
    d.recover()
    d.feed(ev.SessionCreated("sess_r", None))
    d.feed(ev.SessionUpdated(None))
    d.feed(ev.Disconnected(ConnectionLost(1011)), after_s=1.0)
    assert d.phase == "fault"


def test_recover_mid_turn_accounts_every_turn_and_starts_afresh() -> None:
    """recover() mid-turn: the turn under way is done as failed, a turn still waiting for usage is done with it
    missing; the speaker stops, the session is renewed, old timers and late events are dropped, turns work again."""
    d = online()
    ask(d)
    speaking(d)
    d.press(after_s=0.3)  # turn 1 interrupted, waiting for its cancelled response's usage
    d.feed(ev.Played("item_1", 400))
    d.mic(200)
    out = d.recover(after_s=0.1)
    assert [(n.fields["turn"], n.fields["outcome"], n.fields.get("usage_missing")) for n in notes(out, "turn.done")
            ] == [(2, "failed", None), (1, "interrupted", 1)]
    assert notes(out, "turn.done")[0].fields["cause"] == "kioskd bug: RuntimeError"
    assert kinds(out) == ["Interrupt", "PlayEarcon", "Close", "Route", "ResetFallback", "Connect", "Arm", "SetLed"]
    assert (d.status()["phase"], d.status()["link"], d.status()["turn"]) == ("connecting", "connecting", "idle")
    for stale in (ev.Timeout(ev.Timer.HOLD_CAP), ev.Timeout(ev.Timer.USAGE_WAIT), ev.Timeout(ev.Timer.RECYCLE),
                  done("resp_1", "cancelled"), ev.Played("item_1", 0)):
        assert [a for a in d.feed(stale, after_s=1.0) if not isinstance(a, ev.Note)] == []
    d.feed(ev.SessionCreated("sess_r", None))
    d.feed(ev.SessionUpdated(None))
    assert said(ask(d))[-1] == ev.RequestReply("req_1")
    d.feed(ev.ResponseCreated("resp_r"))
    assert d.feed(delta("resp_r", "item_r", 100))
    assert len(d.done_lines()) == 2


@pytest.mark.parametrize(("spacing_s", "exits"), [(1.0, True), (BUG_WINDOW_S / 2 - 1, True),
                                                  (BUG_WINDOW_S / 2, False), (BUG_WINDOW_S + 1, False)])
def test_three_bugs_within_the_window_exit(spacing_s: float, exits: bool) -> None:
    """The third bug within 600 s → Exit(1) (systemd restarts the process); bugs spread wider are recovered."""
    d = online()
    assert [a for a in d.recover() + d.recover(after_s=spacing_s) if isinstance(a, ev.Exit)] == []
    out = d.recover(after_s=spacing_s)
    exits_with = [a for a in out if isinstance(a, ev.Exit)]
    if exits:
        assert exits_with == [ev.Exit(1, "3 kioskd bugs within 600 s")]
        assert note(out, "daemon.bug_limit").level == "error" and "Connect" not in kinds(out)
    else:
        assert exits_with == [] and "Connect" in kinds(out)


# ================================================================================================ the table contract


class Lamp(str, Enum):
    OFF = "off"
    ON = "on"
    BROKEN = "broken"


class LampMachine(Machine[Lamp]):
    """A tiny machine with one honest row and one that leads somewhere it did not declare."""

    REMOTE = (ev.Unknown,)

    def __init__(self) -> None:
        super().__init__(Lamp.OFF)

    def _switch_on(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        self.phase = Lamp.ON
        return [self.arm(ev.Timer.HOLD_CAP, now + 1.0)]

    def _switch_off(self, inp: ev.Pressed, now: float) -> list[ev.Action]:
        self.phase = Lamp.BROKEN  # declared OFF
        return []

    def _wear_out(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        self.phase = Lamp.OFF  # a row with no targets must stay where it was
        return []


LampMachine.TABLE = {
    (Lamp.OFF, ev.Pressed): row(LampMachine._switch_on, Lamp.ON),
    (Lamp.ON, ev.Pressed): row(LampMachine._switch_off, Lamp.OFF),
    (Lamp.ON, ev.Timer.HOLD_CAP): row(LampMachine._wear_out),
}


def test_a_row_leading_to_an_undeclared_phase_is_a_local_protocol_error() -> None:
    """A handler that leaves the machine in a phase its row did not declare raises LocalProtocolError."""
    m = LampMachine()
    assert m.handle(ev.Pressed(0.0), 0.0) == [ev.Arm(ev.Timer.HOLD_CAP, 1.0)] and m.phase is Lamp.ON
    with pytest.raises(LocalProtocolError, match="led to broken"):
        m.handle(ev.Pressed(1.0), 1.0)
    m = LampMachine()
    m.handle(ev.Pressed(0.0), 0.0)
    with pytest.raises(LocalProtocolError, match="Timeout\\(hold_cap\\) in phase on led to off"):
        m.handle(ev.Timeout(ev.Timer.HOLD_CAP), 1.0)


def test_a_missing_row_is_a_bug_for_local_inputs_only() -> None:
    """No row: a local input raises LocalProtocolError; a remote one is ignored; a timer never armed is dropped."""
    m = LampMachine()
    with pytest.raises(LocalProtocolError, match="no row for Released in phase off"):
        m.handle(ev.Released(0.0), 0.0)
    assert note_names(m.handle(ev.Unknown("x"), 0.0)) == ["turn.ignored"]
    assert m.handle(ev.Timeout(ev.Timer.HOLD_CAP), 0.0) == [] and m.phase is Lamp.OFF


def test_the_link_logs_what_it_ignores_under_its_own_name() -> None:
    """A server event the link's phase has no row for (a second session.updated) is ``ws.ignored``, not a turn's."""
    d = online()
    out = d.feed(ev.SessionUpdated(None))
    assert note(out, "ws.ignored").fields == {"input": "SessionUpdated", "phase": "ready"}
