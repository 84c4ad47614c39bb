"""The visitor's turn, driven through the coupled core (``Kiosk``) on a fake clock.

Each test scripts inputs against ``Kiosk.handle(input, now)`` and asserts the actions that come out: the
intentions (``StartQuestion``, ``AppendAudio``, ``Commit``, ``RequestReply``, ``CancelReply``, ``Truncate``,
``ClearOutput``) and their fields, ``Note`` lines, LED patterns, the microphone gate, ``Arm`` times, and
``status()``; never private fields and never a Realtime wire event. The link itself is in test_link.py, the
response ledger in test_ledger.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.pcm import ms_to_samples, samples_to_ms
from kioskd.core.settings import Settings, TurnSettings
from kioskd.core.turn import DONE_GRACE_S, EARCON_GAP_S, PRESS_BURST, PRESS_WINDOW_S
from kioskd.errors import AuthError, ConnectionLost
from tests.core.drive import (
    LINK, SETTINGS, Driver, appended, arms, ask, delta, done, earcons, kinds, leds, mics, note, note_names, notes,
    online, plays, reconnect, said, said_kinds, speaking, then_played, usage_of,
)

TURN = SETTINGS.turn


def with_turn(**changes: Any) -> Settings:
    return Settings(link=LINK, turn=TurnSettings(**{"preroll_ms": 200, **changes}))


# ------------------------------------------------------------------------------------------------ reaching phases


def reach_connecting() -> Driver:
    d = Driver()
    d.begin()
    return d


def reach_offline() -> Driver:
    d = reach_connecting()
    d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=10.0)
    assert d.phase == "offline"
    return d


def reach_fault() -> Driver:
    d = online()
    d.feed(ev.Disconnected(AuthError("wss://api.openai.com/v1/realtime", 401)))
    assert d.phase == "fault"
    return d


def reach_listening(d: Driver) -> None:
    d.press(after_s=1.0)
    d.mic(100)


def reach_waiting(d: Driver) -> None:
    ask(d)


def reach_speaking(d: Driver) -> None:
    ask(d)
    speaking(d)


def stay_idle(d: Driver) -> None:
    pass


# ================================================================================================ the question


@pytest.mark.parametrize("block_ms", [10, 20, 30])
def test_press_hold_300ms_release_starts_appends_commits_and_asks(block_ms: int) -> None:
    """press, 300 ms of MicBlocks, release → StartQuestion, appends of 20–40 ms each, Commit, RequestReply."""
    d = online(with_turn(preroll_ms=0))
    pressed = d.press(after_s=1.0)
    assert said(pressed) == [ev.StartQuestion()]
    assert leds(pressed) == [ev.Led.LISTENING] and mics(pressed) == [ev.Mic.LIVE]
    assert arms(pressed) == {ev.Timer.HOLD_CAP: d.now + TURN.hold_cap_s}
    held, audio = d.mic(300, block_ms)
    released = d.release()
    assert set(said_kinds(held)) == {"AppendAudio"}
    assert said_kinds(released)[-2:] == ["Commit", "RequestReply"]
    assert set(said_kinds(released)[:-2]) <= {"AppendAudio"}
    chunks = appended(held + released)
    assert all(20 <= samples_to_ms(c.size) <= 40 for c in chunks), [samples_to_ms(c.size) for c in chunks]
    assert np.array_equal(np.concatenate(chunks), audio)  # every held sample, in order, once
    assert said(released)[-1] == ev.RequestReply("req_1")
    assert leds(released) == [ev.Led.THINKING] and mics(released) == [ev.Mic.OFF]
    assert arms(released) == {ev.Timer.REPLY_WAIT: d.now + TURN.reply_wait_s,
                              ev.Timer.THINKING_CUE: d.now + TURN.thinking_cue_s}
    assert ev.Disarm(ev.Timer.HOLD_CAP) in released
    assert d.status()["phase"] == "waiting" and d.status()["turn"] == "waiting"


def test_release_after_50ms_is_too_short() -> None:
    """release after 50 ms → StartQuestion (the held audio is dropped), no Commit, IDLE; turn.done too_short."""
    d = online()
    out = d.press(after_s=1.0)
    held, _ = d.mic(50, 10)
    released = d.release()
    assert said(released) == [ev.StartQuestion()]
    assert not {"Commit", "RequestReply"} & set(said_kinds(out + held + released))
    assert leds(released) == [ev.Led.IDLE] and mics(released) == [ev.Mic.PREROLL]
    line = note(released, "turn.done")
    assert (line.fields["outcome"], line.fields["held_ms"], line.level) == ("too_short", 50, "info")
    assert ev.Disarm(ev.Timer.HOLD_CAP) in released
    assert d.phase == "idle"
    assert d.feed(ev.Timeout(ev.Timer.HOLD_CAP), after_s=30.0) == []


def test_min_hold_boundary_counts_samples_not_time() -> None:
    """Exactly 100 ms of held audio commits; one sample less does not, however long the button was down."""
    d = online()
    d.press(after_s=1.0)
    d.feed(ev.MicBlock(np.zeros(ms_to_samples(100) - 1, np.int16)), after_s=2.0)  # 2 s down, 99.96 ms of audio
    assert "Commit" not in said_kinds(d.release())
    assert d.phase == "idle"
    d.press(after_s=1.0)
    d.feed(ev.MicBlock(np.zeros(ms_to_samples(100), np.int16)), after_s=0.1)
    assert said_kinds(d.release())[-2:] == ["Commit", "RequestReply"]


def test_preroll_is_sent_once_as_the_first_append() -> None:
    """MicBlocks in IDLE say nothing; the press says StartQuestion then the newest 200 ms as one AppendAudio."""
    d = online()
    idle_out, idle_audio = d.mic(500)
    assert idle_out == []
    pressed = d.press()
    assert said_kinds(pressed) == ["StartQuestion", "AppendAudio"]
    (preroll,) = appended(pressed)
    assert np.array_equal(preroll, idle_audio[-ms_to_samples(TURN.preroll_ms):])
    held, audio = d.mic(300)
    released = d.release()
    assert np.array_equal(np.concatenate(appended(held + released)), audio)  # the pre-roll is not repeated
    assert said_kinds(released)[-2:] == ["Commit", "RequestReply"]


def test_preroll_does_not_count_as_held_audio() -> None:
    """A press with 200 ms of pre-roll but only 60 ms held is still too short: no Commit."""
    d = online()
    d.mic(1000)
    d.press()
    d.mic(60)
    assert said(d.release()) == [ev.StartQuestion()]
    assert d.phase == "idle"


def test_preroll_holds_only_audio_since_entering_idle() -> None:
    """After a turn ends the ring is empty: a press with no new idle audio sends no pre-roll."""
    d = online()
    d.mic(500)
    d.press()
    d.mic(30)
    d.release()  # too short → IDLE, ring emptied
    assert said(d.press(after_s=1.0)) == [ev.StartQuestion()]


def test_mic_outside_idle_and_listening_says_nothing() -> None:
    """MicBlocks while WAITING or SPEAKING return nothing (the mic is sent only while the button is held)."""
    d = online()
    ask(d)
    assert d.mic(200)[0] == []
    speaking(d)
    assert d.mic(200)[0] == []


# ================================================================================================ the reply


def test_first_delta_starts_speaking() -> None:
    """The response is created, then an audio delta → SPEAKING: Play(pcm, item_id), LED speaking, Arm(reply_cap)."""
    d = online()
    ask(d)
    assert d.feed(ev.ResponseCreated("resp_1"), after_s=0.2) == []
    assert d.phase == "waiting"
    first = delta("resp_1", "item_1", 200)
    out = d.feed(first, after_s=0.1)
    assert kinds(out) == ["Arm", "Play", "SetLed"]
    assert leds(out) == [ev.Led.SPEAKING] and mics(out) == [ev.Mic.OFF]
    assert arms(out) == {ev.Timer.REPLY_CAP: d.now + TURN.reply_cap_s}
    (play,) = plays(out)
    assert play.pcm is first.pcm and play.item_id == "item_1"
    assert ev.Disarm(ev.Timer.REPLY_WAIT) in out and ev.Disarm(ev.Timer.THINKING_CUE) in out
    assert d.status()["phase"] == "speaking"
    second = delta("resp_1", "item_1", 200)
    out = d.feed(second, after_s=0.05)
    assert kinds(out) == ["Play"] and plays(out)[0].pcm is second.pcm
    assert d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s) == []  # disarmed: stale


def test_audio_done_ends_the_reply_once() -> None:
    """AudioDone → EndOfReply; the later ResponseDone does not send a second one."""
    d = online()
    ask(d)
    speaking(d)
    assert kinds(d.feed(ev.AudioDone("resp_1", "item_1"))) == ["EndOfReply"]
    assert kinds(d.feed(done("resp_1"))) == []
    assert d.phase == "speaking"


def test_drain_before_end_of_reply_is_an_earcon() -> None:
    """PlaybackDrained before EndOfReply (an earcon ran out, or an underrun) leaves the reply SPEAKING."""
    d = online()
    ask(d)
    speaking(d)
    assert d.feed(ev.PlaybackDrained(0)) == []
    assert d.phase == "speaking"


def test_response_done_then_drained_ends_turn_with_summary() -> None:
    """AudioDone, ResponseDone(completed), PlaybackDrained → IDLE, LED idle, turn.done with latencies and usage."""
    d = online()
    ask(d)
    released_at = d.now
    speaking(d, ms=1200)  # created at +0.1, first delta at +0.11
    d.feed(ev.PlaybackStarted(at_s=released_at + 0.25), after_s=0.1)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    usage = usage_of(253)
    assert kinds(d.feed(done("resp_1", usage=usage))) == []
    out = d.feed(ev.PlaybackDrained(underruns_total=2, playout={"target_ms": 60}), after_s=1.2)
    assert leds(out) == [ev.Led.IDLE] and mics(out) == [ev.Mic.PREROLL]
    assert said(out) == []
    line = note(out, "turn.done")
    assert line.level == "info"
    assert line.fields | {"usage": None} == {
        "turn": 1, "outcome": "answered", "held_ms": 300, "release_to_first_delta_ms": 110,
        "release_to_first_sound_ms": 250, "reply_ms": 1200, "reply_received_ms": 1200, "underruns": 2,
        "playout": {"target_ms": 60}, "backend": "realtime", "model": "gpt-realtime", "route": "main",
        "responses": 1, "usage": None, "cost_usd": 0.004032}  # 126 audio tokens in at $32 / 1M
    assert line.fields["usage"] == usage
    assert ev.Disarm(ev.Timer.REPLY_CAP) in out
    assert d.status()["phase"] == "idle" and d.status()["last_turn"] == line.fields


def test_drained_then_response_done_ends_turn() -> None:
    """PlaybackDrained before ResponseDone waits; ResponseDone then ends the turn."""
    d = online()
    ask(d)
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    assert d.feed(ev.PlaybackDrained(0), after_s=1.2) == [ev.Arm(ev.Timer.REPLY_WAIT, d.now + DONE_GRACE_S)]
    assert d.phase == "speaking"
    out = d.feed(done("resp_1"), after_s=0.1)
    assert note(out, "turn.done").fields["outcome"] == "answered" and leds(out) == [ev.Led.IDLE]
    assert ev.Disarm(ev.Timer.REPLY_WAIT) in out
    assert d.phase == "idle"


def test_a_reply_heard_in_full_whose_response_never_ends_is_answered_after_a_grace() -> None:
    """The reply played out but its response.done never comes (a server that forgets it): the turn does not sit in
    SPEAKING until the reply cap; after DONE_GRACE_S it is answered and back to idle (the LED too), and its line
    follows ``usage_wait_s`` later with the usage missing."""
    d = online()
    ask(d)
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    out = d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=DONE_GRACE_S)
    assert d.phase == "idle" and leds(out) == [ev.Led.IDLE] and not notes(out, "turn.done")
    assert ev.Disarm(ev.Timer.REPLY_CAP) in out and ev.Interrupt() not in out
    assert arms(out) == {ev.Timer.USAGE_WAIT: d.now + SETTINGS.turn.usage_wait_s,
                         ev.Timer.NEW_VISITOR: d.now + SETTINGS.turn.new_visitor_after_s}
    line = note(d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=SETTINGS.turn.usage_wait_s), "turn.done")
    assert line.fields["outcome"] == "answered" and line.fields["usage_missing"] == 1


def test_more_reply_audio_after_a_drain_cancels_the_grace() -> None:
    """A drain between two audio items of one response arms the grace; the next item's audio disarms it."""
    d = online()
    ask(d)
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    out = d.feed(delta("resp_1", "item_2", 100), after_s=0.5)
    assert out[0] == ev.Disarm(ev.Timer.REPLY_WAIT) and d.phase == "speaking"
    assert d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=DONE_GRACE_S) == []  # disarmed: dropped
    assert d.phase == "speaking"


def test_response_done_without_audio_done_sends_end_of_reply() -> None:
    """ResponseDone with no AudioDone → EndOfReply; the drain then ends the turn."""
    d = online()
    ask(d)
    speaking(d)
    assert kinds(d.feed(done("resp_1"))) == ["EndOfReply"]
    assert note(d.feed(ev.PlaybackDrained(0), after_s=1.2), "turn.done").fields["outcome"] == "answered"
    assert d.phase == "idle"


def test_second_audio_item_keeps_speaking_until_its_own_drain() -> None:
    """A reply with two audio items: the drain after item 1 does not end the turn while item 2 still plays."""
    d = online()
    ask(d)
    speaking(d, item="item_1", ms=400)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.PlaybackDrained(0), after_s=0.5)  # item 1 heard in full before item 2 arrived
    assert kinds(d.feed(delta("resp_1", "item_2", 400), after_s=0.1)) == ["Play"]
    assert kinds(d.feed(ev.AudioDone("resp_1", "item_2"))) == ["EndOfReply"]  # item 2's tail is played out too
    assert notes(d.feed(done("resp_1")), "turn.done") == []
    assert d.phase == "speaking"
    assert note(d.feed(ev.PlaybackDrained(0), after_s=0.4), "turn.done").fields["reply_ms"] == 800


@pytest.mark.parametrize(("status", "outcome", "apology"),
                         [("completed", "no_audio", False), ("failed", "failed", True), ("incomplete", "failed", True)])
def test_response_done_without_audio(status: str, outcome: str, apology: bool) -> None:
    """WAITING, ResponseDone with no audio → IDLE, LED idle; apology earcon and outcome failed unless completed."""
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"))
    out = d.feed(done("resp_1", status), after_s=0.5)
    assert leds(out) == [ev.Led.IDLE]
    assert earcons(out) == ([ev.Earcon.APOLOGY] if apology else [])
    assert said(out) == []
    assert note(out, "turn.done").fields["outcome"] == outcome
    assert d.phase == "idle"


# ================================================================================================ what was heard


def test_reply_ms_is_what_played_when_a_barge_in_cuts_the_reply() -> None:
    """3 s of reply received, the visitor barges in 1.2 s into it: ``reply_ms`` is the 1 200 ms the speaker says
    it played (``Played``), ``reply_received_ms`` the 3 000 ms that arrived. The line waits for the cancelled
    response's usage as before."""
    d, out = barge_in_speaking(received_ms=3000)
    assert not notes(out, "turn.done")
    assert not notes(d.feed(ev.Played("item_1", 1200)), "turn.done")  # the cancelled response still owes usage
    line = note(d.feed(done("resp_1", "cancelled", usage_of(50)), after_s=0.2), "turn.done").fields
    assert line["outcome"] == "interrupted"
    assert (line["reply_ms"], line["reply_received_ms"]) == (1200, 3000)


def test_reply_ms_counts_earlier_items_in_full_and_the_cut_one_to_where_it_stopped() -> None:
    """Two audio items: the first (800 ms) played out, the second cut 300 ms in → 1 100 ms heard of 1 800."""
    d = online()
    ask(d)
    speaking(d, item="item_1", ms=800)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(delta("resp_1", "item_2", 1000), after_s=0.1)
    d.feed(done("resp_1"))
    out = then_played(d, d.press(after_s=1.0), 300, item="item_2")
    line = note(out, "turn.done").fields
    assert (line["outcome"], line["reply_ms"], line["reply_received_ms"]) == ("interrupted", 1100, 1800)


def test_reply_ms_leaves_out_what_the_playout_buffer_dropped() -> None:
    """A 60 s reply played out, but the speaker dropped 14.6 s it had no room for: 45.4 s heard of 60 s (the
    answer is still answered; the adapter has warned, ``audio.overflow``)."""
    d = online()
    ask(d)
    speaking(d, ms=60000)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    line = note(d.feed(ev.PlaybackDrained(0, dropped_ms=14600), after_s=60.0), "turn.done").fields
    assert (line["outcome"], line["reply_ms"], line["reply_received_ms"]) == ("answered", 45400, 60000)


def test_reply_ms_of_a_turn_that_asked_nothing_is_zero_not_the_previous_reply() -> None:
    """A tap too short to commit right after an answered turn: its line says 0 ms of reply, not the last
    turn's."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    assert note(d.feed(ev.PlaybackDrained(0), after_s=1.2), "turn.done").fields["reply_ms"] == 1200
    d.press(after_s=1.0)
    line = note(d.release(after_s=0.05), "turn.done").fields
    assert (line["outcome"], line["reply_ms"], line["reply_received_ms"]) == ("too_short", 0, 0)


def test_a_turn_whose_interrupt_never_reports_is_logged_with_reply_ms_unknown() -> None:
    """If the speaker never answers the Interrupt (its action failed), the capped turn's line still goes out,
    ``usage_wait_s`` later, with ``reply_ms`` null rather than a guess."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    d.feed(done("resp_1"))
    out = d.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=TURN.reply_cap_s)
    assert not notes(out, "turn.done") and arms(out)[ev.Timer.USAGE_WAIT] == d.now + TURN.usage_wait_s
    line = note(d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=TURN.usage_wait_s), "turn.done").fields
    assert (line["outcome"], line["reply_ms"], line["reply_received_ms"]) == ("capped", None, 1200)


# ================================================================================================ barge-in


def barge_in_speaking(received_ms: float = 1200) -> tuple[Driver, list[ev.Action]]:
    d = online()
    ask(d)
    speaking(d, ms=received_ms)
    d.mic(100)  # the exhibit's own voice in the mic: never sent
    return d, d.press(after_s=1.0)  # past the press earcon's gap: a barge-in has none


def test_barge_in_while_speaking_stops_and_cancels() -> None:
    """Pressed while SPEAKING → Interrupt, CancelReply(resp_1), ClearOutput, LED listening; no pre-roll, no
    press earcon (the speaker stopping acknowledges it), no StartQuestion until the Played is in."""
    d, out = barge_in_speaking()
    assert kinds(out) == ["Interrupt", "CancelReply", "ClearOutput", "Arm", "Arm", "SetLed"]
    assert earcons(out) == []
    assert said(out) == [ev.CancelReply("resp_1"), ev.ClearOutput()]
    assert leds(out) == [ev.Led.LISTENING] and mics(out) == [ev.Mic.LIVE]
    assert arms(out) == {ev.Timer.HOLD_CAP: d.now + TURN.hold_cap_s,
                         ev.Timer.USAGE_WAIT: d.now + TURN.usage_wait_s}  # the cancelled reply's usage is due
    assert ev.Disarm(ev.Timer.REPLY_CAP) in out
    assert note(out, "turn.barge_in").fields == {"phase": "speaking"}
    assert notes(out, "turn.done") == []
    assert d.status()["phase"] == "listening"


@pytest.mark.parametrize(("played_ms", "end_ms"), [(500, 500), (0, 0), (1199, 1199), (1500, 1200)])
def test_played_after_barge_in_truncates_at_min_played_received(played_ms: int, end_ms: int) -> None:
    """Played(item, played) after a barge-in → Truncate at min(played, received), then StartQuestion."""
    d, _ = barge_in_speaking(received_ms=1200)
    out = d.feed(ev.Played("item_1", played_ms))
    assert said(out) == [ev.Truncate("item_1", end_ms), ev.StartQuestion()]
    assert note(out, "turn.truncated").fields == {"item_id": "item_1", "played_ms": played_ms,
                                                  "received_ms": 1200, "audio_end_ms": end_ms}
    assert "Interrupt" not in kinds(out)


def execute_like_daemon(d: Driver, actions: list[ev.Action], played_ms: int) -> list[str]:
    """Run actions as the executor does: the Played an Interrupt produces is handled after the rest of the list,
    before any queued input. Return the Interrupts and intentions in the order they would take effect."""
    order: list[str] = []
    produced = 0
    for action in actions:
        if isinstance(action, (ev.Interrupt, *ev.INTENTS)):
            order.append(type(action).__name__)
        produced += isinstance(action, ev.Interrupt)
    for _ in range(produced):
        order += execute_like_daemon(d, d.feed(ev.Played("item_1", played_ms)), played_ms)
    return order


def test_barge_in_order_is_stop_cancel_truncate_start() -> None:
    """Executed the way the executor executes actions, a barge-in is stop → cancel → truncate → new question."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    order = execute_like_daemon(d, d.press(after_s=0.3), played_ms=500)
    assert order == ["Interrupt", "CancelReply", "ClearOutput", "Truncate", "StartQuestion"]


def test_played_everything_skips_truncate_but_starts_the_question() -> None:
    """Played ≥ received of a complete item (heard in full) → no Truncate, still StartQuestion."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.press(after_s=0.5)
    assert said(d.feed(ev.Played("item_1", 1200))) == [ev.StartQuestion()]


def test_mic_audio_before_played_is_sent_after_the_start() -> None:
    """Audio held before the Played arrives goes out after Truncate and StartQuestion."""
    d, _ = barge_in_speaking()
    held, audio = d.mic(60)
    assert said(held) == []
    out = d.feed(ev.Played("item_1", 700))
    assert said_kinds(out) == ["Truncate", "StartQuestion", "AppendAudio"]
    assert np.array_equal(appended(out)[0], audio)


def test_late_deltas_of_cancelled_response_are_dropped_and_next_turn_works() -> None:
    """After a barge-in, late deltas of the cancelled response play nothing (turn.late_delta); the next question's
    RequestReply waits for the cancelled response's ResponseDone; its reply then plays."""
    d, _ = barge_in_speaking()
    d.feed(ev.Played("item_1", 700))
    out = d.feed(delta("resp_1", "item_1", 200))
    assert plays(out) == [] and note(out, "turn.late_delta").fields == {"response_id": "resp_1"}
    assert kinds(d.feed(ev.AudioDone("resp_1", "item_1"))) == []
    d.mic(300)
    out = d.release()
    assert said_kinds(out)[-1] == "Commit"  # one response at a time: no RequestReply yet
    out = d.feed(delta("resp_1", "item_1", 200))  # still late, now in WAITING
    assert plays(out) == [] and note_names(out) == ["turn.late_delta"]
    assert d.phase == "waiting"
    out = d.feed(done("resp_1", "cancelled"))
    assert said(out) == [ev.RequestReply("req_2")]
    assert note(out, "turn.done").fields["outcome"] == "interrupted"
    assert d.phase == "waiting"
    d.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(d.feed(delta("resp_2", "item_2", 200)))] == ["item_2"]
    assert d.phase == "speaking"


def test_barge_in_while_waiting_before_created_cancels_without_id() -> None:
    """Pressed while WAITING before the response is created → CancelReply(None), StartQuestion; no Interrupt; the
    cancelled response, once created, is never played."""
    d = online()
    ask(d)
    out = d.press(after_s=0.5)
    assert "Interrupt" not in kinds(out)
    assert said(out) == [ev.CancelReply(None), ev.StartQuestion()]
    assert leds(out) == [ev.Led.LISTENING]
    assert ev.Disarm(ev.Timer.REPLY_WAIT) in out
    assert d.phase == "listening"
    assert kinds(d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)) == []
    assert plays(d.feed(delta("resp_1", "item_1", 200))) == []
    d.mic(300)
    d.release()
    assert plays(d.feed(delta("resp_1", "item_1", 200))) == []
    assert said(d.feed(done("resp_1", "cancelled"))) == [ev.RequestReply("req_2")]
    d.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(d.feed(delta("resp_2", "item_9", 200)))] == ["item_9"]


def test_barge_in_while_waiting_after_created_cancels_by_id() -> None:
    """Pressed while WAITING after the response was created → CancelReply with that id."""
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"))
    assert said(d.press(after_s=0.5)) == [ev.CancelReply("resp_1"), ev.StartQuestion()]


def test_no_cancel_after_response_done() -> None:
    """Pressed after ResponseDone but before the drain → Interrupt, no CancelReply (nothing is active); the turn
    owes no usage, so its line goes out with the Played (which says how much was heard), and the Played
    truncates."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1", usage=usage_of(40)))
    out = d.press(after_s=0.2)
    assert "Interrupt" in kinds(out)
    assert said(out) == [ev.ClearOutput()] and not notes(out, "turn.done")
    out = d.feed(ev.Played("item_1", 600))
    assert said(out) == [ev.Truncate("item_1", 600), ev.StartQuestion()]
    line = note(out, "turn.done").fields
    assert (line["outcome"], line["usage"]["total_tokens"]) == ("interrupted", 40)
    assert (line["reply_ms"], line["reply_received_ms"]) == (600, 1200)


def test_only_one_cancel_per_response() -> None:
    """A second barge-in before the first response's done never cancels it again; the request that was waiting
    for it is dropped with its turn."""
    d = online()
    ask(d)
    d.press(after_s=0.5)  # CancelReply(None)
    d.mic(300)
    d.release()  # RequestReply waits for the cancelled response
    out = d.press(after_s=0.5)
    assert said(out) == [ev.StartQuestion()]
    line = note(out, "turn.done").fields  # turn 2 asked nothing the service saw: done at once
    assert (line["turn"], line["outcome"], line["responses"], line["usage"]) == (2, "interrupted", 0, None)
    d.feed(ev.ResponseCreated("resp_1"))
    out = d.feed(done("resp_1", "cancelled"))
    assert said(out) == []
    assert note(out, "turn.done").fields["turn"] == 1
    assert d.phase == "listening"


# ================================================================================================ refused presses


@pytest.mark.parametrize("reach", [reach_offline, reach_connecting, reach_fault])
def test_refused_press_is_not_a_turn(reach: Callable[[], Driver]) -> None:
    """Pressed while OFFLINE / CONNECTING / FAULT → offline earcon and turn.rejected naming the phase; nothing
    said, no turn.done, phase unchanged, microphone closed again."""
    d = reach()
    phase = d.phase
    d.mic(200)
    out = d.press(after_s=1.0)
    assert kinds(out) == ["PlayEarcon"] and earcons(out) == [ev.Earcon.OFFLINE]
    assert note(out, "turn.rejected").fields == {"reason": phase}
    assert mics(out) == [ev.Mic.OFF]
    assert d.phase == phase
    assert d.release(after_s=0.5) == []
    assert d.done_lines() == []


def test_refused_press_names_the_phase_as_it_is_now() -> None:
    """The reason follows the link while it stays down: offline, then connecting, then fault."""
    d = reach_offline()
    reasons = [note(d.press(after_s=2.0), "turn.rejected").fields["reason"]]
    d.feed(ev.Timeout(ev.Timer.RECONNECT))
    reasons.append(note(d.press(after_s=2.0), "turn.rejected").fields["reason"])
    d.feed(ev.Disconnected(AuthError("wss://x", 401)))
    reasons.append(note(d.press(after_s=2.0), "turn.rejected").fields["reason"])
    assert reasons == ["offline", "connecting", "fault"]


def test_rejected_press_is_not_queued() -> None:
    """A press refused while connecting does not start a turn once the session is ready."""
    d = reach_connecting()
    d.press()
    d.feed(ev.SessionCreated("sess_1", None))
    out = d.feed(ev.SessionUpdated(None))
    assert said(out) == [] and d.phase == "idle"


def test_offline_prompts_do_not_pile_up() -> None:
    """Presses while offline get one (spoken, a few seconds long) prompt per EARCON_GAP_S at most, so none queue
    up into the next question."""
    gap_s = EARCON_GAP_S[ev.Earcon.OFFLINE]
    d = reach_connecting()
    first = d.press()
    d.release(after_s=0.2)
    second = d.press(after_s=gap_s - 0.5)
    d.release(after_s=0.2)
    third = d.press(after_s=1.0)
    assert [earcons(a) for a in (first, second, third)] == [[ev.Earcon.OFFLINE], [], [ev.Earcon.OFFLINE]]
    assert len(notes(d.log, "turn.rejected")) == 3


# ================================================================================================ disconnects


@pytest.mark.parametrize("reach", [reach_listening, reach_waiting, reach_speaking])
def test_disconnect_mid_turn_apologises_and_recovers(reach: Callable[[Driver], None]) -> None:
    """Disconnected mid-turn → apology, turn.done disconnected, OFFLINE, reconnect armed; all turn timers
    disarmed; the next press after reconnecting works."""
    d = online()
    reach(d)
    was = d.phase
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=0.1)
    assert earcons(out) == [ev.Earcon.APOLOGY]
    assert ("Interrupt" in kinds(out)) == (was == "speaking")
    assert leds(out) == [ev.Led.OFFLINE] and mics(out) == [ev.Mic.OFF]
    assert said(out) == []
    if was == "speaking":  # what was heard comes with the Played; no session: nothing to truncate
        assert arms(out) == {ev.Timer.RECONNECT: pytest.approx(d.now + 0.5),
                             ev.Timer.USAGE_WAIT: d.now + TURN.usage_wait_s}  # in case the Played never came
        assert not notes(out, "turn.done")
        out = d.feed(ev.Played("item_1", 300))
        assert said(out) == [] and note(out, "turn.done").fields["reply_ms"] == 300
        assert ev.Disarm(ev.Timer.USAGE_WAIT) in out
    else:
        assert arms(out) == {ev.Timer.RECONNECT: pytest.approx(d.now + 0.5)}
    line = note(out, "turn.done")
    assert (line.fields["outcome"], line.level) == ("disconnected", "error")
    assert line.fields["cause"].startswith("ConnectionLost")
    assert d.phase == "offline"
    for stale in ev.Timer.HOLD_CAP, ev.Timer.REPLY_WAIT, ev.Timer.REPLY_CAP, ev.Timer.THINKING_CUE:
        assert d.feed(ev.Timeout(stale), after_s=1.0) == []
    assert d.release() == []
    reconnect(d)
    assert said_kinds(ask(d))[-2:] == ["Commit", "RequestReply"]
    d.feed(ev.ResponseCreated("resp_9"))
    assert len(plays(d.feed(delta("resp_9", "item_9", 200)))) == 1
    assert len(d.done_lines()) == 1


def test_disconnect_in_idle_has_no_apology() -> None:
    """Disconnected in IDLE → OFFLINE with LED offline and a reconnect, but no earcon and no turn.done."""
    d = online()
    out = d.feed(ev.Disconnected(ConnectionLost(1001, "session expired")))
    assert earcons(out) == [] and leds(out) == [ev.Led.OFFLINE]
    assert notes(out, "turn.done") == []
    assert d.phase == "offline"


@pytest.mark.parametrize("reach", [stay_idle, reach_waiting, reach_speaking])
def test_fatal_server_error_ends_the_turn_in_fault(reach: Callable[[Driver], None]) -> None:
    """ServerError invalid_api_key → FAULT with LED error; a turn under way ends disconnected."""
    d = online()
    reach(d)
    out = d.feed(ev.ServerError("invalid_api_key", "Incorrect API key provided", "invalid_request_error", None))
    out = then_played(d, out, 500)
    assert leds(out) == [ev.Led.ERROR]
    assert d.phase == "fault"
    assert [n.fields["outcome"] for n in notes(out, "turn.done")] == ([] if reach is stay_idle else ["disconnected"])


@pytest.mark.parametrize("code", ["response_cancel_not_active", "invalid_value", "input_audio_buffer_commit_empty",
                                  "conversation_already_has_active_response"])
@pytest.mark.parametrize("reach", [stay_idle, reach_listening, reach_waiting, reach_speaking])
def test_benign_server_error_is_only_a_warning(code: str, reach: Callable[[Driver], None]) -> None:
    """A benign server error code not naming a reply request → one warning note; nothing else."""
    d = online()
    reach(d)
    phase = d.phase
    out = d.feed(ev.ServerError(code, "whatever", "invalid_request_error", "evt_7"))
    assert [(a.name, a.level) for a in out if isinstance(a, ev.Note)] == [("ws.server_error", "warning")]
    assert kinds(out, publish=True) == []
    assert d.phase == phase


@pytest.mark.parametrize("code", ["unknown_parameter", "insufficient_quota", "invalid_api_key"])
@pytest.mark.parametrize("reach", [stay_idle, reach_listening, reach_waiting, reach_speaking])
def test_a_fatal_code_naming_one_request_of_a_ready_session_is_only_a_warning(
        code: str, reach: Callable[[Driver], None]) -> None:
    """An error with a code that would be fatal, naming a client event other than the session's configuration
    (one append of the question): one warning; the session stays up and the turn goes on."""
    d = online()
    reach(d)
    phase = d.phase
    out = d.feed(ev.ServerError(code, "Unknown parameter: 'audio.foo'.", "invalid_request_error", "evt_7"))
    assert [(a.name, a.level) for a in out if isinstance(a, ev.Note)] == [("ws.server_error", "warning")]
    assert kinds(out, publish=True) == []
    assert d.phase == phase and d.status()["link"] == "ready"


def test_a_fatal_code_naming_the_reply_request_fails_the_turn_and_keeps_the_session() -> None:
    """unknown_parameter naming the turn's RequestReply: the turn fails at once with the apology, as any refused
    reply request does; the session is not closed, and the next question is answered on it."""
    d = online()
    ask(d)
    out = d.feed(ev.ServerError("unknown_parameter", "Unknown parameter: 'response.foo'.", "invalid_request_error",
                                "req_1"))
    assert note(out, "ws.server_error").level == "error" and "ws.fault" not in note_names(out)
    assert "Close" not in kinds(out) and d.status()["link"] == "ready"
    assert earcons(out) == [ev.Earcon.APOLOGY] and d.phase == "idle"
    assert note(out, "turn.done").fields["outcome"] == "failed"
    assert said(ask(d))[-1] == ev.RequestReply("req_2")


def test_server_error_naming_the_request_fails_the_turn_at_once() -> None:
    """An error naming the turn's RequestReply ref while WAITING → apology, turn.done failed, IDLE; the next
    question's RequestReply goes out at once and its reply plays."""
    d = online()
    ask(d)
    out = d.feed(ev.ServerError("server_error", "The server had an error.", "server_error", "req_1"))
    assert note(out, "ws.server_error").level == "error"
    assert earcons(out) == [ev.Earcon.APOLOGY] and leds(out) == [ev.Led.IDLE]
    line = note(out, "turn.done").fields
    assert (line["outcome"], line["responses"], line["cause"]) == (
        "failed", 0, "server error server_error: The server had an error.")
    assert said(ask(d))[-1] == ev.RequestReply("req_2")
    d.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(d.feed(delta("resp_2", "item_2", 200)))] == ["item_2"]


def test_an_unnamed_refusal_holds_the_next_request_at_most_usage_wait() -> None:
    """A request refused by an error naming nothing stays open: the turn times out, and the next question's
    RequestReply goes out once the first turn's usage wait gives up on it (which is never billed)."""
    d = online()
    ask(d)
    out = d.feed(ev.ServerError("server_error", "The server had an error.", "server_error", None))
    assert note(out, "ws.server_error").level == "warning" and d.phase == "waiting"
    assert said(d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s)) == [ev.CancelReply(None)]
    ended_s = d.now
    d.feed(ev.ServerError("response_cancel_not_active", "no active response", "invalid_request_error", None))
    assert "RequestReply" not in said_kinds(ask(d))
    out = d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=ended_s + TURN.usage_wait_s - d.now)
    assert said(out) == [ev.RequestReply("req_2")]
    line = note(out, "turn.done").fields
    assert (line["outcome"], line["responses"], "usage_missing" in line) == ("timed_out", 0, False)
    d.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(d.feed(delta("resp_2", "item_2", 200)))] == ["item_2"]


@pytest.mark.parametrize("stray", [
    ev.Unknown("response.mcp_call.in_progress"), ev.ServerEvent("rate_limits.updated"), ev.Connected(),
    ev.InputCommitted("item_u"), ev.TranscriptDone("resp_1", "item_1", "hello"), ev.ItemTruncated("item_1", 300),
    ev.AudioDone("resp_x", "item_x"), done("resp_x"), delta("resp_x", "item_x", 20),
    ev.BadEvent("response.output_audio.delta", "bad_audio", "bad base64 audio"),
], ids=lambda inp: type(inp).__name__)
@pytest.mark.parametrize("reach", [stay_idle, reach_listening, reach_waiting, reach_speaking])
def test_stray_server_inputs_change_nothing(stray: ev.Input, reach: Callable[[Driver], None]) -> None:
    """A server input that is not the turn's business (unknown, acknowledgements, another response's events, a
    bad frame) is noted at most: nothing said, played or lit, and the phase stays."""
    d = online()
    reach(d)
    before = d.status()
    out = d.feed(stray)
    assert [a for a in out if not isinstance(a, ev.Note)] == []
    assert d.status() == before


def test_bad_events_warn_once_per_kind() -> None:
    """BadEvent: a warning the first time a (type, reason) is seen, then debug lines that count it; the detail,
    which may quote the server, is said but is no part of the kind."""
    d = online()
    lines = [note(d.feed(ev.BadEvent("conversation.item.truncated", "bad_field", f"not a number: 'soon-{i}'")),
                  "ws.bad_event") for i in range(3)]
    assert [(n.level, n.fields["count"]) for n in lines] == [("warning", 1), ("debug", 2), ("debug", 3)]
    assert lines[0].fields["detail"] == "not a number: 'soon-0'"
    other = note(d.feed(ev.BadEvent("(unparsed)", "not_json")), "ws.bad_event")
    assert (other.level, other.fields["count"]) == ("warning", 1)
    assert note(d.feed(ev.Unknown("response.mcp_call.in_progress")), "ws.unknown_event").level == "debug"


# ================================================================================================ caps


def test_hold_cap_commits_and_the_button_is_stuck_until_released() -> None:
    """Timeout(hold_cap) while LISTENING → Commit and RequestReply as if released. The button still down is a
    jammed button: button.stuck once and the error LED through the reply and after it (not the idle LED, which
    would promise a kiosk that hears presses); the release says button.unstuck and the idle LED is back."""
    d = online()
    d.press(after_s=1.0)
    pressed_at = d.now
    d.mic(300)
    out = d.feed(ev.Timeout(ev.Timer.HOLD_CAP), after_s=TURN.hold_cap_s - 0.3)
    assert said_kinds(out)[-2:] == ["Commit", "RequestReply"]
    assert note(out, "turn.hold_cap").level == "warning"
    assert note(out, "button.stuck").level == "warning" and note(out, "button.stuck").fields["held_s"] == 30.0
    assert leds(out) == [ev.Led.ERROR] and d.phase == "waiting"
    assert d.status()["button_stuck"] is True
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    out = d.feed(ev.PlaybackDrained(0), after_s=1.2)
    assert d.phase == "idle" and leds(out) == [ev.Led.ERROR]  # answered, still jammed
    out = d.release(after_s=20.0)
    assert note(out, "button.unstuck").fields["held_s"] == round(d.now - pressed_at, 1)
    assert leds(out) == [ev.Led.IDLE] and d.status()["button_stuck"] is False
    assert not notes(d.release(after_s=1.0), "button.unstuck")  # said once


def test_a_press_flood_is_refused_past_the_burst_and_said_once() -> None:
    """Presses in IDLE beyond PRESS_BURST within PRESS_WINDOW_S start nothing (no StartQuestion sent to the
    service, no turn line): one turn.press_flood warning, the rest counted at debug; once the window frees, a
    press starts a turn again and turn.press_flood_over says how many were refused."""
    d = online()
    sent = []
    for _ in range(PRESS_BURST):
        sent += said_kinds(d.press(after_s=0.1))
        d.release(after_s=0.1)  # too short: a turn each
    assert sent.count("StartQuestion") == PRESS_BURST
    flood = []
    for _ in range(50):
        flood += d.press(after_s=0.06)
        flood += d.release(after_s=0.06)
    assert not [a for a in flood if isinstance(a, ev.INTENTS)] and not notes(flood, "turn.done")
    assert [n.level for n in notes(flood, "turn.press_flood")] == ["warning"]
    assert len(notes(flood, "turn.rejected")) == 50 and {n.level for n in notes(flood, "turn.rejected")} == {"debug"}
    out = d.press(after_s=PRESS_WINDOW_S)
    assert "StartQuestion" in said_kinds(out) and note(out, "turn.press_flood_over").fields == {"refused": 50}
    assert d.phase == "listening"


def test_hold_cap_with_a_dead_mic_is_too_short() -> None:
    """Timeout(hold_cap) with no held audio (a dead microphone) → nothing committed, turn.done too_short."""
    d = online()
    d.press(after_s=1.0)
    out = d.feed(ev.Timeout(ev.Timer.HOLD_CAP), after_s=TURN.hold_cap_s)
    assert "Commit" not in said_kinds(out)
    assert note(out, "turn.done").fields["outcome"] == "too_short"
    assert d.phase == "idle"


@pytest.mark.parametrize("created", [False, True])
def test_reply_wait_cancels_apologises_and_idles(created: bool) -> None:
    """Timeout(reply_wait) → CancelReply (by id once known), apology, IDLE; the abandoned response is never
    played, and its ResponseDone closes the turn as timed_out with its usage."""
    d = online()
    ask(d)
    if created:
        d.feed(ev.ResponseCreated("resp_1"))
    out = d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s)
    assert said(out) == [ev.CancelReply("resp_1" if created else None)]
    assert earcons(out) == [ev.Earcon.APOLOGY] and leds(out) == [ev.Led.IDLE]
    assert ev.Timer.USAGE_WAIT in arms(out) and notes(out, "turn.done") == []
    assert d.phase == "idle"
    d.feed(ev.ResponseCreated("resp_1"))
    assert plays(d.feed(delta("resp_1", "item_1", 200))) == []
    line = note(d.feed(done("resp_1", "cancelled", usage_of(12))), "turn.done")
    assert (line.fields["outcome"], line.level, line.fields["usage"]["total_tokens"]) == ("timed_out", "error", 12)


def test_reply_cap_interrupts_cancels_and_truncates() -> None:
    """Timeout(reply_cap) → Interrupt, CancelReply, ClearOutput, IDLE; the Played that follows truncates only."""
    d = online()
    ask(d)
    speaking(d, ms=1200)
    out = d.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=TURN.reply_cap_s)
    assert kinds(out)[:3] == ["Interrupt", "CancelReply", "ClearOutput"]
    assert said(out) == [ev.CancelReply("resp_1"), ev.ClearOutput()]
    assert leds(out) == [ev.Led.IDLE]
    assert d.phase == "idle"
    assert said(d.feed(ev.Played("item_1", 800))) == [ev.Truncate("item_1", 800)]
    assert plays(d.feed(delta("resp_1", "item_1", 200))) == []
    assert note(d.feed(done("resp_1", "cancelled")), "turn.done").fields["outcome"] == "capped"


def test_reply_cap_after_response_done_does_not_cancel() -> None:
    """Timeout(reply_cap) after ResponseDone → Interrupt but no CancelReply; the turn is done as soon as the
    speaker says how much was heard."""
    d = online()
    ask(d)
    speaking(d)
    d.feed(done("resp_1"))
    out = d.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=TURN.reply_cap_s)
    assert "Interrupt" in kinds(out) and said(out) == [ev.ClearOutput()]
    line = note(d.feed(ev.Played("item_1", 1200)), "turn.done").fields
    assert (line["outcome"], line["reply_ms"]) == ("capped", 1200)


# ========================================================================================= bounce, reload, earcons


def test_press_within_rearm_window_is_a_bounce() -> None:
    """A press 20 ms after the release is ignored (turn.bounce, no barge-in on the turn just committed); 60 ms
    after the release it barges in."""
    d = online()
    ask(d)
    out = d.press(after_s=0.02)
    assert note_names(out) == ["turn.bounce"] and said(out) == []
    assert mics(out) == [ev.Mic.OFF]  # the gate the executor opened for the press is closed again
    assert d.phase == "waiting"
    out = d.press(after_s=0.04)
    assert said(out) == [ev.CancelReply(None), ev.StartQuestion()]
    assert d.phase == "listening"


def test_release_in_idle_is_ignored() -> None:
    """Released in IDLE (its press was bounced or refused) → nothing."""
    d = online()
    assert d.release(after_s=1.0) == []
    assert d.phase == "idle"


def test_reload_applies_caps_at_once_without_a_new_session() -> None:
    """Reloaded with new turn caps only → no new session; the next question uses the new reply_wait."""
    d = online()
    out = d.feed(ev.Reloaded(with_turn(reply_wait_s=3.0)), after_s=1.0)
    assert "Connect" not in kinds(out) and d.phase == "idle"
    assert arms(ask(d))[ev.Timer.REPLY_WAIT] == d.now + 3.0


def test_press_and_thinking_earcons() -> None:
    """A press from IDLE gets a short earcon; a reply slower than thinking_cue_s gets one soft "thinking" earcon;
    a reply that comes sooner cancels the cue; earcons off silences them all."""
    d = online()
    assert earcons(d.press()) == [ev.Earcon.PRESS]
    d.mic(300)
    d.release()
    assert earcons(d.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=TURN.thinking_cue_s)) == [ev.Earcon.THINKING]
    quick = online()
    ask(quick)
    quick.feed(ev.ResponseCreated("resp_1"))
    assert ev.Disarm(ev.Timer.THINKING_CUE) in quick.feed(delta("resp_1", "item_1", 100))
    assert quick.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=5) == []
    silent = online(with_turn(earcons=False))
    assert earcons(silent.press()) == []
    silent.mic(300)
    silent.release()
    assert earcons(silent.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s)) == []


# ================================================================================================ turn.done


def end_answered(d: Driver) -> None:
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1", usage=usage_of(100)))
    d.feed(ev.PlaybackDrained(0), after_s=1.2)


def end_interrupted(d: Driver) -> None:
    speaking(d)
    d.press(after_s=0.3)
    d.feed(ev.Played("item_1", 400))
    d.feed(done("resp_1", "cancelled", usage_of(100)), after_s=0.2)  # arrives while the next turn listens


def end_too_short(d: Driver) -> None:
    d.press(after_s=1.0)
    d.mic(40)
    d.release()


def end_timed_out(d: Driver) -> None:
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s)
    d.feed(done("resp_1", "cancelled", usage_of(100)), after_s=0.5)


def end_capped(d: Driver) -> None:
    speaking(d)
    d.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=TURN.reply_cap_s)
    d.feed(ev.Played("item_1", 900))
    d.feed(done("resp_1", "cancelled", usage_of(100)), after_s=0.1)


def end_no_audio(d: Driver) -> None:
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(done("resp_1", "completed", usage_of(100)))


def end_failed(d: Driver) -> None:
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(done("resp_1", "failed", usage_of(100)))


def end_disconnected(d: Driver) -> None:
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(ev.Disconnected(ConnectionLost(1006)))


@pytest.mark.parametrize(("end", "outcome", "level", "usage", "missing"), [
    (end_answered, "answered", "info", 100, 0), (end_interrupted, "interrupted", "info", 100, 0),
    (end_too_short, "too_short", "info", None, 0), (end_timed_out, "timed_out", "error", 100, 0),
    (end_capped, "capped", "warning", 100, 0), (end_no_audio, "no_audio", "warning", 100, 0),
    (end_failed, "failed", "error", 100, 0), (end_disconnected, "disconnected", "error", None, 1),
], ids=lambda v: v.__name__.removeprefix("end_") if callable(v) else None)
def test_every_turn_ends_in_exactly_one_turn_done(end: Callable[[Driver], None], outcome: str, level: str,
                                                   usage: int | None, missing: int) -> None:
    """However a turn ends, it writes exactly one turn.done with its outcome and the usage of its responses."""
    d = online()
    if end is not end_too_short:
        ask(d)
    end(d)
    d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=TURN.usage_wait_s)  # nothing more may come of it
    (done_note,) = notes(d.log, "turn.done")
    line = done_note.fields
    assert (line["turn"], line["outcome"], done_note.level) == (1, outcome, level)
    assert (line["usage"] or {}).get("total_tokens") == usage
    assert line.get("usage_missing", 0) == missing
    assert d.status()["last_turn"] == line


def test_museum_visit_bills_every_turn_once() -> None:
    """Four visitors' turns, two cut short by a barge-in whose cancelled response reports its usage only after the
    next turn started: four turn.done lines, whose usage sums to all the usage the service reported."""
    d = online(expires_in_s=3600.0)
    reported = 0

    def finish(rid: str, status: str, tokens: int) -> list[ev.Action]:
        nonlocal reported
        reported += tokens
        return d.feed(done(rid, status, usage_of(tokens)), after_s=0.05)

    ask(d)  # turn 1, barged in on while speaking
    speaking(d, "resp_1", "item_1")
    d.press(after_s=0.5)
    d.feed(ev.Played("item_1", 480))
    d.mic(120)
    assert notes(finish("resp_1", "cancelled", 310), "turn.done")  # done while turn 2 is still held
    d.mic(200)
    out = d.release()
    assert said(out)[-1] == ev.RequestReply("req_2")
    speaking(d, "resp_2", "item_2")  # turn 2, barged in on too, its done arriving after turn 3's release
    d.press(after_s=0.4)
    d.feed(ev.Played("item_2", 300))
    d.mic(400)
    assert "RequestReply" not in said_kinds(d.release())
    out = finish("resp_2", "cancelled", 275)
    assert said(out) == [ev.RequestReply("req_3")] and notes(out, "turn.done")
    for n in (3, 4):  # turns 3 and 4 heard in full
        if n == 4:
            ask(d)
        speaking(d, f"resp_{n}", f"item_{n}")
        d.feed(ev.AudioDone(f"resp_{n}", f"item_{n}"))
        finish(f"resp_{n}", "completed", 500 + n)
        d.feed(ev.PlaybackDrained(0), after_s=1.2)
    lines = d.done_lines()
    assert [(line["turn"], line["outcome"]) for line in lines] == [
        (1, "interrupted"), (2, "interrupted"), (3, "answered"), (4, "answered")]
    assert sum(line["usage"]["total_tokens"] for line in lines) == reported == 310 + 275 + 503 + 504
    assert not any("usage_missing" in line for line in lines)


def test_usage_that_never_comes_is_missing_after_usage_wait() -> None:
    """A cancelled response whose ResponseDone never comes: Timeout(usage_wait) at the end + usage_wait_s writes
    the turn.done with usage_missing 1, and releases the next question's waiting RequestReply."""
    d, out = barge_in_speaking()
    ended_s = d.now
    assert arms(out)[ev.Timer.USAGE_WAIT] == ended_s + TURN.usage_wait_s
    d.feed(ev.Played("item_1", 500))
    d.mic(300)
    assert "RequestReply" not in said_kinds(d.release())
    out = d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=ended_s + TURN.usage_wait_s - d.now)
    line = note(out, "turn.done")
    assert (line.fields["outcome"], line.fields["usage"], line.fields["usage_missing"]) == ("interrupted", None, 1)
    assert said(out) == [ev.RequestReply("req_2")]
    assert notes(d.feed(done("resp_1", "cancelled", usage_of(9))), "turn.done") == []  # too late: not billed twice
    assert len(d.done_lines()) == 1


def test_disconnect_flushes_turns_waiting_for_usage() -> None:
    """A disconnect writes the turn.done of every ended turn still waiting for usage at once, usage missing."""
    d, _ = barge_in_speaking()
    d.feed(ev.Played("item_1", 500))
    d.mic(300)
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=0.5)
    assert [(n.fields["turn"], n.fields["outcome"], n.fields.get("usage_missing")) for n in notes(out, "turn.done")
            ] == [(1, "interrupted", 1), (2, "disconnected", None)]
    assert ev.Disarm(ev.Timer.USAGE_WAIT) in out
    assert d.feed(ev.Timeout(ev.Timer.USAGE_WAIT), after_s=TURN.usage_wait_s) == []
    assert len(d.done_lines()) == 2


# ======================================================================================= the kiosk around the turn


def test_microphone_gate_follows_the_phase() -> None:
    """SetMic with every public phase change: LIVE while listening, PREROLL in idle, OFF in every other phase."""
    d = online()
    ask(d)
    speaking(d)
    d.press(after_s=1.0)
    d.feed(ev.Played("item_1", 300))
    d.mic(300)
    d.release()
    d.feed(ev.Disconnected(AuthError("wss://x", 401)))  # → fault
    d.feed(ev.Reloaded(SETTINGS))  # → connecting
    d.feed(ev.Timeout(ev.Timer.CONNECT), after_s=10.0)  # → offline
    gates = [(a.fields["to"], d.log[i + 2]) for i, a in enumerate(d.log)
             if isinstance(a, ev.Note) and a.name == "turn.phase"]
    assert {phase for phase, _ in gates} == {"connecting", "idle", "listening", "waiting", "speaking", "fault",
                                             "offline"}
    expected = {"listening": ev.Mic.LIVE, "idle": ev.Mic.PREROLL}
    assert [gate for _, gate in gates] == [ev.SetMic(expected.get(phase, ev.Mic.OFF)) for phase, _ in gates]


def test_phase_changes_are_published_with_led_and_mic() -> None:
    """Every public phase change emits turn.phase, SetLed, SetMic and Publish, once; serving is False until the
    kiosk first reaches idle, offline or fault, and True from then on."""
    d = Driver()
    out = d.begin()
    assert out[-4:] == [ev.Note("turn.phase", "info", {"from": None, "to": "connecting"}), ev.SetLed(ev.Led.OFFLINE),
                        ev.SetMic(ev.Mic.OFF), ev.Publish("connecting", False)]
    assert said(d.feed(ev.SessionCreated("sess_1", None))) == [
        ev.ConfigureSession("cfg_1", "cedar", LINK.instructions)]
    out = d.feed(ev.SessionUpdated(None))
    assert [a for a in out if isinstance(a, ev.Publish)] == [ev.Publish("idle", True)]
    ask(d)
    d.feed(ev.Disconnected(ConnectionLost(1006)))
    d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=0.5)
    published = [(a.phase, a.serving) for a in d.log if isinstance(a, ev.Publish)]
    assert published == [("connecting", False), ("idle", True), ("listening", True), ("waiting", True),
                         ("offline", True), ("connecting", True)]
    phases = [n.fields["to"] for n in notes(d.log, "turn.phase")]
    assert phases == [p for p, _ in published]
    assert len(leds(d.log)) == len(phases)


def test_first_serving_phase_may_be_offline() -> None:
    """A kiosk that never reaches its service still becomes serving (it answers presses with the prompt)."""
    d = reach_offline()
    assert [(a.phase, a.serving) for a in d.log if isinstance(a, ev.Publish)] == [
        ("connecting", False), ("offline", True)]


def test_speaker_reopen_waits_for_idle() -> None:
    """SpeakerReopenDue in idle → ReopenSpeaker at once; mid-turn → ReopenSpeaker on the return to idle, once."""
    d = online()
    assert d.feed(ev.SpeakerReopenDue(0.12)) == [ev.ReopenSpeaker(0.12)]
    ask(d)
    speaking(d)
    assert d.feed(ev.SpeakerReopenDue(0.2)) == []
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    out = d.feed(ev.PlaybackDrained(3), after_s=1.2)
    assert [a for a in out if isinstance(a, ev.ReopenSpeaker)] == [ev.ReopenSpeaker(0.2)]
    assert "ReopenSpeaker" not in kinds(d.feed(ev.Pressed(d.now + 1), after_s=1))
