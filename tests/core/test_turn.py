"""The turn state machine, driven synchronously on a fake clock.

Each test scripts inputs against ``TurnMachine.handle(input, now)`` and asserts the actions that come out (their
types and order, the ``type`` of each ``Send`` payload, ``audio_end_ms``, LED patterns, ``Arm`` times) and
``status()``; never private fields.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.pcm import Pcm, b64_to_pcm, ms_to_samples, samples_to_ms
from kioskd.core.turn import Phase, TurnMachine, TurnSettings
from kioskd.errors import AuthError, ConnectionLost, LocalProtocolError
from tests.realtime_schema import validate_client

SETTINGS = TurnSettings(voice="cedar", instructions="You are the voice of exhibit 12.", preroll_ms=200)


# ------------------------------------------------------------------------------------------------ driver


class Kiosk:
    """A TurnMachine on a fake clock: ``now`` only moves when a test moves it."""

    def __init__(self, settings: TurnSettings = SETTINGS) -> None:
        self.settings = settings
        self.m = TurnMachine(settings, rand=lambda: 0.5)
        self.now = 100.0
        self._block = 0

    def feed(self, inp: ev.Input, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        out = self.m.handle(inp, self.now)
        assert isinstance(out, list)
        return out

    def begin(self) -> list[ev.Action]:
        return self.m.begin(self.now)

    @property
    def phase(self) -> str:
        return str(self.m.status()["phase"])

    def counters(self) -> dict[str, int]:
        return dict(self.m.status()["counters"])

    # --- inputs with realistic payloads

    def block(self, ms: float) -> ev.MicBlock:
        """A mic block whose samples are a running counter, so appends can be checked sample by sample."""
        n = ms_to_samples(ms)
        pcm = (np.arange(self._block, self._block + n) % 30000).astype(np.int16)
        self._block += n
        return ev.MicBlock(pcm)

    def mic(self, ms: float, block_ms: float = 20) -> tuple[list[ev.Action], Pcm]:
        """Feed ``ms`` of mic audio in blocks (the clock advances with the audio); return actions and the audio."""
        out: list[ev.Action] = []
        audio: list[Pcm] = []
        left = ms
        while left > 1e-9:
            step = min(block_ms, left)
            blk = self.block(step)
            audio.append(blk.pcm)
            out += self.feed(blk, after_s=step / 1000)
            left -= step
        return out, np.concatenate(audio) if audio else np.zeros(0, np.int16)

    def press(self, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self.feed(ev.Pressed(self.now))

    def release(self, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self.feed(ev.Released(self.now))


def delta(response_id: str, item_id: str, ms: float) -> ev.AudioDelta:
    return ev.AudioDelta(response_id, item_id, np.full(ms_to_samples(ms), 7, np.int16))


def done(response_id: str, status: str = "completed", usage: dict[str, Any] | None = None) -> ev.ResponseDone:
    return ev.ResponseDone(response_id, status, "client_cancelled" if status == "cancelled" else None, usage)


# ------------------------------------------------------------------------------------------------ action views


def sends(actions: Iterable[ev.Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, ev.Send)]


def send_types(actions: Iterable[ev.Action]) -> list[str]:
    return [e["type"] for e in sends(actions)]


def kinds(actions: Iterable[ev.Action]) -> list[str]:
    """Action class names, with the log lines and disarms left out (they are not the behaviour under test)."""
    return [type(a).__name__ for a in actions if not isinstance(a, (ev.Note, ev.Disarm))]


def notes(actions: Iterable[ev.Action]) -> dict[str, ev.Note]:
    return {a.name: a for a in actions if isinstance(a, ev.Note)}


def leds(actions: Iterable[ev.Action]) -> list[ev.Led]:
    return [a.pattern for a in actions if isinstance(a, ev.SetLed)]


def arms(actions: Iterable[ev.Action]) -> dict[ev.Timer, float]:
    return {a.timer: a.at_s for a in actions if isinstance(a, ev.Arm)}


def plays(actions: Iterable[ev.Action]) -> list[ev.Play]:
    return [a for a in actions if isinstance(a, ev.Play)]


def earcons(actions: Iterable[ev.Action]) -> list[ev.Earcon]:
    return [a.earcon for a in actions if isinstance(a, ev.PlayEarcon)]


def appended_audio(events: Iterable[dict[str, Any]]) -> list[Pcm]:
    return [b64_to_pcm(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append"]


# ------------------------------------------------------------------------------------------------ scenarios


def online(settings: TurnSettings = SETTINGS, expires_in_s: float | None = None) -> Kiosk:
    """CONNECTING → IDLE: begin, session.created, session.updated with turn_detection null."""
    k = Kiosk(settings)
    k.begin()
    k.feed(ev.SessionCreated("sess_1", 2e9 if expires_in_s else None, expires_in_s), after_s=0.1)
    k.feed(ev.SessionUpdated(turn_detection=None), after_s=0.1)
    assert k.phase == "idle"
    return k


def ask(k: Kiosk, held_ms: float = 300) -> list[ev.Action]:
    """IDLE → WAITING: press, hold with mic audio, release."""
    out = k.press(after_s=1.0)
    out += k.mic(held_ms)[0]
    out += k.release()
    assert k.phase == "waiting"
    return out


def speaking(k: Kiosk, rid: str = "resp_1", item: str = "item_1", ms: float = 1200) -> list[ev.Action]:
    """WAITING → SPEAKING: response.created, then ``ms`` of reply audio in 200 ms deltas."""
    out = k.feed(ev.ResponseCreated(rid), after_s=0.1)
    left = ms
    while left > 0:
        out += k.feed(delta(rid, item, min(200, left)), after_s=0.01)
        left -= 200
    assert k.phase == "speaking"
    return out


# ================================================================================================ connection


def test_begin_connects_and_arms_connect_timeout() -> None:
    """begin → LED offline, Connect, Arm(connect) at now + connect timeout; phase CONNECTING."""
    k = Kiosk()
    out = k.begin()
    assert kinds(out) == ["SetLed", "Connect", "Arm"]
    assert leds(out) == [ev.Led.OFFLINE]
    assert arms(out) == {ev.Timer.CONNECT: k.now + SETTINGS.connect_timeout_s}
    assert k.m.status()["phase"] == "connecting"
    assert k.m.status()["connection"] == "connecting"


def test_session_created_sends_ga_session_update() -> None:
    """session.created → one session.update: GA realtime, PCM 24 kHz both ways, no turn detection, voice, prompt."""
    k = Kiosk()
    k.begin()
    out = k.feed(ev.SessionCreated("sess_1", None), after_s=0.2)
    assert kinds(out) == ["Send"]
    (event,) = sends(out)
    validate_client(event)
    assert event["type"] == "session.update"
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert "turn_detection" in session["audio"]["input"] and session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["instructions"] == "You are the voice of exhibit 12."
    assert k.phase == "connecting"


def test_session_updated_goes_idle() -> None:
    """session.updated (turn_detection null) → IDLE, LED idle, connect timer disarmed, no recycle without a deadline."""
    k = Kiosk()
    k.begin()
    k.feed(ev.SessionCreated("sess_1", None))
    out = k.feed(ev.SessionUpdated(turn_detection=None), after_s=0.1)
    assert ev.Disarm(ev.Timer.CONNECT) in out
    assert kinds(out) == ["SetLed"]
    assert leds(out) == [ev.Led.IDLE]
    assert k.m.status()["phase"] == "idle"
    assert k.m.status()["connection"] == "online"
    assert k.feed(ev.Timeout(ev.Timer.CONNECT), after_s=SETTINGS.connect_timeout_s) == []


def test_session_updated_with_server_vad_warns() -> None:
    """session.updated still showing server_vad → a warning note (the configuration did not take)."""
    k = Kiosk()
    k.begin()
    k.feed(ev.SessionCreated("sess_1", None))
    out = k.feed(ev.SessionUpdated(turn_detection={"type": "server_vad"}))
    assert notes(out)["ws.session_mismatch"].level == "warning"


def test_connect_timeout_closes_and_arms_reconnect() -> None:
    """Timeout(connect) → Close, OFFLINE, LED offline, Arm(reconnect) after the first backoff delay (0.5 s)."""
    k = Kiosk()
    k.begin()
    out = k.feed(ev.Timeout(ev.Timer.CONNECT), after_s=SETTINGS.connect_timeout_s)
    assert kinds(out) == ["Close", "SetLed", "Arm"]
    assert leds(out) == [ev.Led.OFFLINE]
    assert arms(out) == {ev.Timer.RECONNECT: pytest.approx(k.now + 0.5)}
    assert k.phase == "offline"
    assert k.m.status()["connection"] == "offline"


def test_reconnect_timeout_connects_again_with_growing_delays() -> None:
    """Timeout(reconnect) → CONNECTING (Connect, Arm(connect)); repeated connect timeouts back off 0.5, 1.75, 3.5 s."""
    k = Kiosk()
    k.begin()
    delays = []
    for _ in range(3):
        out = k.feed(ev.Timeout(ev.Timer.CONNECT), after_s=SETTINGS.connect_timeout_s)
        delays.append(arms(out)[ev.Timer.RECONNECT] - k.now)
        out = k.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=delays[-1])
        assert kinds(out) == ["Connect", "Arm"]
        assert arms(out) == {ev.Timer.CONNECT: k.now + SETTINGS.connect_timeout_s}
        assert k.phase == "connecting"
    assert delays == pytest.approx([0.5, 1.75, 3.5])


def test_recycle_armed_before_expiry_and_reconnects_in_idle() -> None:
    """A known lifetime arms recycle a margin before it; Timeout(recycle) in IDLE → Close(1000), Connect."""
    k = Kiosk()
    k.begin()
    k.feed(ev.SessionCreated("sess_1", 2e9, expires_in_s=3600.0))
    out = k.feed(ev.SessionUpdated(None), after_s=0.2)
    assert arms(out) == {ev.Timer.RECYCLE: pytest.approx(k.now + 3600.0 - SETTINGS.recycle_margin_s)}
    out = k.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=3600.0 - SETTINGS.recycle_margin_s)
    assert kinds(out) == ["Close", "Connect", "Arm"]
    assert [a for a in out if isinstance(a, ev.Close)] == [ev.Close(1000)]
    assert arms(out) == {ev.Timer.CONNECT: k.now + SETTINGS.connect_timeout_s}
    assert k.phase == "connecting"


def test_short_session_lifetime_is_still_used() -> None:
    """A session lifetime shorter than the recycle margin still recycles before expiry, but not at once."""
    k = Kiosk()
    k.begin()
    k.feed(ev.SessionCreated("sess_1", 2e9, expires_in_s=60.0))
    out = k.feed(ev.SessionUpdated(None))
    assert k.now < arms(out)[ev.Timer.RECYCLE] < k.now + 60.0


def test_recycle_during_a_turn_waits_for_idle() -> None:
    """Timeout(recycle) while LISTENING changes nothing; the recycle happens when the turn returns to IDLE."""
    k = online(expires_in_s=600.0)
    k.press(after_s=1.0)
    k.mic(40)
    assert k.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=600.0) == []
    assert k.phase == "listening"
    out = k.release()  # too short: back to IDLE, where the recycle runs
    assert send_types(out) == ["input_audio_buffer.clear"]
    assert "Close" in kinds(out) and "Connect" in kinds(out)
    assert k.phase == "connecting"


def test_recycle_during_a_reply_waits_for_reply_wait_to_end_the_turn() -> None:
    """Timeout(recycle) while WAITING is held until the turn ends (here by reply_wait), then Close + Connect."""
    k = online(expires_in_s=600.0)
    ask(k)
    assert k.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=1.0) == []
    assert k.phase == "waiting"
    out = k.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=SETTINGS.reply_wait_s)
    assert kinds(out)[-3:] == ["Close", "Connect", "Arm"]
    assert k.phase == "connecting"


def test_recycle_during_speaking_runs_after_turn_done() -> None:
    """Timeout(recycle) while SPEAKING waits for the reply to be heard, then Close + Connect."""
    k = online(expires_in_s=600.0)
    ask(k)
    speaking(k)
    assert k.feed(ev.Timeout(ev.Timer.RECYCLE)) == []
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(done("resp_1"))
    out = k.feed(ev.PlaybackDrained(0), after_s=1.2)
    assert "turn.done" in notes(out)
    assert kinds(out)[-3:] == ["Close", "Connect", "Arm"]
    assert k.phase == "connecting"


# ================================================================================================ listening


@pytest.mark.parametrize("block_ms", [10, 20, 30])
def test_press_hold_300ms_release_sends_clear_appends_commit_create(block_ms: int) -> None:
    """press, 300 ms of MicBlocks, release → clear, appends of 20–40 ms each, commit, response.create."""
    k = online(TurnSettings(preroll_ms=0))
    pressed = k.press(after_s=1.0)
    pressed_at = k.now
    assert send_types(pressed) == ["input_audio_buffer.clear"]
    assert leds(pressed) == [ev.Led.LISTENING]
    assert arms(pressed) == {ev.Timer.HOLD_CAP: pressed_at + 30.0}
    held, audio = k.mic(300, block_ms)
    released = k.release()
    events = sends(held) + sends(released)
    types = [e["type"] for e in events]
    assert types[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert set(types[:-2]) == {"input_audio_buffer.append"}
    chunks = appended_audio(events)
    assert all(20 <= samples_to_ms(c.size) <= 40 for c in chunks), [samples_to_ms(c.size) for c in chunks]
    assert np.array_equal(np.concatenate(chunks), audio)  # every held sample, in order, once
    for e in sends(pressed) + events:
        validate_client(e)
    assert leds(released) == [ev.Led.THINKING]
    assert arms(released) == {ev.Timer.REPLY_WAIT: k.now + SETTINGS.reply_wait_s,
                              ev.Timer.THINKING_CUE: k.now + SETTINGS.thinking_cue_s}
    assert ev.Disarm(ev.Timer.HOLD_CAP) in released
    assert k.m.status()["phase"] == "waiting"


def test_release_after_50ms_is_too_short() -> None:
    """release after 50 ms → clear, no commit, back to IDLE with LED idle, turn.too_short note."""
    k = online()
    out = k.press(after_s=1.0)
    held, _ = k.mic(50, 10)
    released = k.release()
    assert send_types(released) == ["input_audio_buffer.clear"]
    all_types = send_types(out + held + released)
    assert "input_audio_buffer.commit" not in all_types and "response.create" not in all_types
    assert leds(released) == [ev.Led.IDLE]
    assert notes(released)["turn.too_short"].fields["held_ms"] == 50
    assert ev.Disarm(ev.Timer.HOLD_CAP) in released
    assert k.phase == "idle"
    assert k.counters()["too_short"] == 1
    assert k.feed(ev.Timeout(ev.Timer.HOLD_CAP), after_s=30.0) == []


def test_min_hold_boundary_counts_samples_not_time() -> None:
    """Exactly 100 ms of held audio commits; one sample less does not, however long the button was down."""
    k = online()
    k.press(after_s=1.0)
    k.feed(ev.MicBlock(np.zeros(ms_to_samples(100) - 1, np.int16)), after_s=2.0)  # 2 s down, 99.96 ms of audio
    assert "input_audio_buffer.commit" not in send_types(k.release())
    assert k.phase == "idle"
    k.press(after_s=1.0)
    k.feed(ev.MicBlock(np.zeros(ms_to_samples(100), np.int16)), after_s=0.1)
    assert send_types(k.release())[-2:] == ["input_audio_buffer.commit", "response.create"]


def test_preroll_is_sent_once_as_the_first_append() -> None:
    """MicBlocks in IDLE send nothing; the press sends clear then the newest pre-roll (200 ms) as one append."""
    k = online()
    idle_out, idle_audio = k.mic(500)
    assert idle_out == []
    pressed = k.press()
    assert send_types(pressed) == ["input_audio_buffer.clear", "input_audio_buffer.append"]
    (preroll,) = appended_audio(sends(pressed))
    assert np.array_equal(preroll, idle_audio[-ms_to_samples(SETTINGS.preroll_ms):])
    held, audio = k.mic(300)
    released = k.release()
    chunks = appended_audio(sends(held + released))
    assert np.array_equal(np.concatenate(chunks), audio)  # the pre-roll is not repeated
    assert send_types(released)[-2:] == ["input_audio_buffer.commit", "response.create"]


def test_preroll_does_not_count_as_held_audio() -> None:
    """A press with 200 ms of pre-roll but only 60 ms held is still too short: clear, no commit."""
    k = online()
    k.mic(1000)
    k.press()
    k.mic(60)
    released = k.release()
    assert send_types(released) == ["input_audio_buffer.clear"]
    assert k.phase == "idle"


def test_preroll_holds_only_audio_since_entering_idle() -> None:
    """After a turn ends the ring is empty: a press with no new idle audio sends no pre-roll."""
    k = online()
    k.mic(500)
    k.press()
    k.mic(30)
    k.release()  # too short → IDLE, ring cleared
    assert send_types(k.press(after_s=1.0)) == ["input_audio_buffer.clear"]


def test_mic_outside_idle_and_listening_sends_nothing() -> None:
    """MicBlocks while WAITING or SPEAKING send nothing (the mic is sent only while the button is held)."""
    k = online()
    ask(k)
    assert k.mic(200)[0] == []
    speaking(k)
    assert k.mic(200)[0] == []


# ================================================================================================ the reply


def test_first_delta_starts_speaking() -> None:
    """response.created then an audio delta → SPEAKING: Play(pcm, item_id), LED speaking, Arm(reply_cap)."""
    k = online()
    ask(k)
    assert k.feed(ev.ResponseCreated("resp_1"), after_s=0.2) == []
    assert k.phase == "waiting"
    d = delta("resp_1", "item_1", 200)
    out = k.feed(d, after_s=0.1)
    assert kinds(out) == ["SetLed", "Arm", "Play"]
    assert leds(out) == [ev.Led.SPEAKING]
    assert arms(out) == {ev.Timer.REPLY_CAP: k.now + SETTINGS.reply_cap_s}
    (play,) = plays(out)
    assert play.pcm is d.pcm and play.item_id == "item_1"
    assert ev.Disarm(ev.Timer.REPLY_WAIT) in out
    assert k.m.status()["phase"] == "speaking"
    d2 = delta("resp_1", "item_1", 200)
    out = k.feed(d2, after_s=0.05)
    assert kinds(out) == ["Play"] and plays(out)[0].pcm is d2.pcm
    assert k.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=SETTINGS.reply_wait_s) == []  # disarmed, stale


def test_audio_done_ends_the_reply_once() -> None:
    """AudioDone → EndOfReply; the later ResponseDone does not send a second one."""
    k = online()
    ask(k)
    speaking(k)
    assert kinds(k.feed(ev.AudioDone("resp_1", "item_1"))) == ["EndOfReply"]
    assert kinds(k.feed(done("resp_1"))) == []
    assert k.phase == "speaking"


def test_drain_before_end_of_reply_is_an_earcon() -> None:
    """PlaybackDrained before EndOfReply (an earcon ran out, or an underrun) leaves the reply SPEAKING."""
    k = online()
    ask(k)
    speaking(k)
    assert k.feed(ev.PlaybackDrained(0)) == []
    assert k.phase == "speaking"


def test_response_done_then_drained_ends_turn_with_summary() -> None:
    """AudioDone, ResponseDone(completed), PlaybackDrained → IDLE, LED idle, turn.done with latencies and usage."""
    k = online()
    ask(k)
    released_at = k.now
    speaking(k, ms=1200)  # response.created at +0.1, first delta at +0.11
    k.feed(ev.PlaybackStarted(at_s=released_at + 0.25), after_s=0.1)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    usage = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121}
    assert kinds(k.feed(done("resp_1", usage=usage))) == []
    out = k.feed(ev.PlaybackDrained(underruns_total=2), after_s=1.2)
    assert leds(out) == [ev.Led.IDLE]
    assert send_types(out) == []
    summary = notes(out)["turn.done"].fields
    assert summary["release_to_first_delta_ms"] == 110
    assert summary["release_to_first_sound_ms"] == 250
    assert summary["reply_ms"] == 1200
    assert summary["held_ms"] == 300
    assert summary["underruns"] == 2
    assert summary["usage"] == usage
    assert ev.Disarm(ev.Timer.REPLY_CAP) in out
    status = k.m.status()
    assert status["phase"] == "idle"
    assert status["last_turn"] == summary
    assert status["counters"]["turns_done"] == 1


def test_drained_then_response_done_ends_turn() -> None:
    """PlaybackDrained before ResponseDone waits; ResponseDone then ends the turn."""
    k = online()
    ask(k)
    speaking(k)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    assert k.feed(ev.PlaybackDrained(0), after_s=1.2) == []
    assert k.phase == "speaking"
    out = k.feed(done("resp_1"))
    assert "turn.done" in notes(out) and leds(out) == [ev.Led.IDLE]
    assert k.phase == "idle"


def test_response_done_without_audio_done_sends_end_of_reply() -> None:
    """ResponseDone with no AudioDone → EndOfReply; the drain then ends the turn."""
    k = online()
    ask(k)
    speaking(k)
    assert kinds(k.feed(done("resp_1"))) == ["EndOfReply"]
    out = k.feed(ev.PlaybackDrained(0), after_s=1.2)
    assert "turn.done" in notes(out)
    assert k.phase == "idle"


def test_second_audio_item_keeps_speaking_until_its_own_drain() -> None:
    """A reply with two audio items: the drain after item 1 does not end the turn while item 2 still plays."""
    k = online()
    ask(k)
    speaking(k, item="item_1", ms=400)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(ev.PlaybackDrained(0), after_s=0.5)  # item 1 heard in full before item 2 arrived
    out = k.feed(delta("resp_1", "item_2", 400), after_s=0.1)
    assert kinds(out) == ["Play"]
    out = k.feed(ev.AudioDone("resp_1", "item_2"))
    assert kinds(out) == ["EndOfReply"]  # item 2's tail must be played out too
    out = k.feed(done("resp_1"))
    assert "turn.done" not in notes(out)
    assert k.phase == "speaking"


@pytest.mark.parametrize(("status", "apology"), [("completed", False), ("failed", True), ("incomplete", True)])
def test_response_done_without_audio(status: str, apology: bool) -> None:
    """WAITING, ResponseDone with no audio → IDLE, LED idle; apology earcon unless completed."""
    k = online()
    ask(k)
    k.feed(ev.ResponseCreated("resp_1"))
    out = k.feed(done("resp_1", status), after_s=0.5)
    assert leds(out) == [ev.Led.IDLE]
    assert earcons(out) == ([ev.Earcon.APOLOGY] if apology else [])
    assert send_types(out) == []
    assert k.phase == "idle"


# ================================================================================================ barge-in


def barge_in_speaking(received_ms: float = 1200) -> tuple[Kiosk, list[ev.Action]]:
    k = online()
    ask(k)
    speaking(k, ms=received_ms)
    k.mic(100)  # the exhibit's own voice in the mic: never sent
    return k, k.press(after_s=0.3)


def test_barge_in_while_speaking_stops_and_cancels() -> None:
    """Pressed while SPEAKING → Interrupt, response.cancel with the response id, LED listening; no pre-roll."""
    k, out = barge_in_speaking()
    assert kinds(out) == ["Interrupt", "Send", "SetLed", "Arm"]
    assert send_types(out) == ["response.cancel"]
    assert sends(out)[0]["response_id"] == "resp_1"
    validate_client(sends(out)[0])
    assert leds(out) == [ev.Led.LISTENING]
    assert ev.Timer.HOLD_CAP in arms(out)
    assert ev.Disarm(ev.Timer.REPLY_CAP) in out
    assert k.m.status()["phase"] == "listening"
    assert k.counters()["barge_ins"] == 1


@pytest.mark.parametrize("played_ms", [500, 0, 1199])
def test_played_after_barge_in_truncates_to_heard_audio(played_ms: int) -> None:
    """Played(item, played < received) after a barge-in → truncate at played, then input_audio_buffer.clear."""
    k, _ = barge_in_speaking(received_ms=1200)
    out = k.feed(ev.Played("item_1", played_ms))
    assert send_types(out) == ["conversation.item.truncate", "input_audio_buffer.clear"]
    truncate = sends(out)[0]
    assert truncate["item_id"] == "item_1"
    assert truncate["content_index"] == 0
    assert truncate["audio_end_ms"] == played_ms
    assert "Interrupt" not in kinds(out)
    for e in sends(out):
        validate_client(e)


def test_played_1500_of_1200_received_truncates_at_1200() -> None:
    """Played(item, 1500) mid-stream with 1200 ms received → conversation.item.truncate audio_end_ms=1200, clear."""
    k, _ = barge_in_speaking(received_ms=1200)
    out = k.feed(ev.Played("item_1", 1500))
    assert [(e["type"], e.get("audio_end_ms")) for e in sends(out)] == [
        ("conversation.item.truncate", 1200), ("input_audio_buffer.clear", None)]


def execute_like_daemon(k: Kiosk, actions: list[ev.Action], played_ms: int) -> list[str]:
    """Run actions as daemon.py's executor does: the Played an Interrupt produces is handled after the rest of the
    list, before any queued input. Return the client event types in wire order."""
    wire: list[str] = []
    produced = 0
    for action in actions:
        if isinstance(action, ev.Send):
            wire.append(action.event["type"])
        elif isinstance(action, ev.Interrupt):
            produced += 1
    for _ in range(produced):
        wire += execute_like_daemon(k, k.feed(ev.Played("item_1", played_ms)), played_ms)
    return wire


def test_barge_in_wire_order_is_cancel_truncate_clear() -> None:
    """Executed the way daemon.py executes actions, a barge-in sends cancel → truncate → clear."""
    k = online()
    ask(k)
    speaking(k, ms=1200)
    wire = execute_like_daemon(k, k.press(after_s=0.3), played_ms=500)
    assert wire == ["response.cancel", "conversation.item.truncate", "input_audio_buffer.clear"]


def test_played_everything_skips_truncate_but_clears() -> None:
    """Played ≥ received (the item was heard in full) → no truncate, still input_audio_buffer.clear."""
    k = online()
    ask(k)
    speaking(k, ms=1200)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.press(after_s=0.5)
    out = k.feed(ev.Played("item_1", 1200))
    assert send_types(out) == ["input_audio_buffer.clear"]


def test_mic_audio_before_played_is_sent_after_the_clear() -> None:
    """Audio held before Played arrives goes out after truncate and clear (stop → cancel → truncate → clear)."""
    k, _ = barge_in_speaking()
    held, audio = k.mic(60)
    assert sends(held) == []
    out = k.feed(ev.Played("item_1", 700))
    assert send_types(out) == ["conversation.item.truncate", "input_audio_buffer.clear", "input_audio_buffer.append"]
    assert np.array_equal(appended_audio(sends(out))[0], audio)


def test_late_deltas_of_cancelled_response_are_dropped_and_next_turn_works() -> None:
    """After a barge-in, late deltas of the cancelled response play nothing; the next turn speaks normally."""
    k, _ = barge_in_speaking()
    k.feed(ev.Played("item_1", 700))
    assert k.feed(delta("resp_1", "item_1", 200)) == []
    assert kinds(k.feed(ev.AudioDone("resp_1", "item_1"))) == []
    k.mic(300)
    out = k.release()
    # one response at a time: the new response.create waits for the cancelled one's response.done
    assert send_types(out)[-1] == "input_audio_buffer.commit"
    assert plays(k.feed(delta("resp_1", "item_1", 200))) == []  # still late, now in WAITING
    assert send_types(k.feed(done("resp_1", "cancelled"))) == ["response.create"]
    assert k.phase == "waiting"
    k.feed(ev.ResponseCreated("resp_2"))
    out = k.feed(delta("resp_2", "item_2", 200))
    assert [p.item_id for p in plays(out)] == ["item_2"]
    assert k.phase == "speaking"
    assert k.counters()["late_deltas"] >= 2


def test_barge_in_while_waiting_before_created_cancels_without_id() -> None:
    """Pressed while WAITING before response.created → response.cancel with no id, then clear; no Interrupt."""
    k = online()
    ask(k)
    out = k.press(after_s=0.5)
    assert "Interrupt" not in kinds(out)
    assert send_types(out) == ["response.cancel", "input_audio_buffer.clear"]
    assert "response_id" not in sends(out)[0]
    validate_client(sends(out)[0])
    assert leds(out) == [ev.Led.LISTENING]
    assert ev.Disarm(ev.Timer.REPLY_WAIT) in out
    assert k.phase == "listening"
    # the cancelled response shows up later: it and its audio are ignored
    assert kinds(k.feed(ev.ResponseCreated("resp_1"), after_s=0.1)) == []
    assert k.feed(delta("resp_1", "item_1", 200)) == []
    k.mic(300)
    k.release()
    assert plays(k.feed(delta("resp_1", "item_1", 200))) == []
    k.feed(done("resp_1", "cancelled"))
    k.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(k.feed(delta("resp_2", "item_9", 200)))] == ["item_9"]


def test_barge_in_while_waiting_after_created_cancels_by_id() -> None:
    """Pressed while WAITING after response.created → response.cancel with that id."""
    k = online()
    ask(k)
    k.feed(ev.ResponseCreated("resp_1"))
    out = k.press(after_s=0.5)
    assert send_types(out) == ["response.cancel", "input_audio_buffer.clear"]
    assert sends(out)[0]["response_id"] == "resp_1"


def test_no_cancel_after_response_done() -> None:
    """Pressed after ResponseDone but before the drain → Interrupt, no response.cancel (nothing is active)."""
    k = online()
    ask(k)
    speaking(k, ms=1200)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(done("resp_1"))
    out = k.press(after_s=0.2)
    assert "Interrupt" in kinds(out)
    assert "response.cancel" not in send_types(out)
    out = k.feed(ev.Played("item_1", 600))
    assert [(e["type"], e.get("audio_end_ms")) for e in sends(out)] == [
        ("conversation.item.truncate", 600), ("input_audio_buffer.clear", None)]


def test_only_one_cancel_per_response() -> None:
    """A second barge-in before the first response's done never cancels it again."""
    k = online()
    ask(k)
    k.press(after_s=0.5)  # cancel (no id)
    k.mic(300)
    k.release()
    out = k.press(after_s=0.5)  # the second response.create was still waiting for resp_1's done: nothing to cancel
    assert send_types(out).count("response.cancel") == 0
    k.feed(ev.ResponseCreated("resp_1"))
    assert send_types(k.feed(done("resp_1", "cancelled"))) == []  # the waiting create was dropped with its turn
    assert k.phase == "listening"


# ================================================================================================ offline


def reach_offline() -> Kiosk:
    k = Kiosk()
    k.begin()
    k.feed(ev.Timeout(ev.Timer.CONNECT), after_s=10.0)
    assert k.phase == "offline"
    return k


def reach_connecting() -> Kiosk:
    k = Kiosk()
    k.begin()
    return k


def reach_fault() -> Kiosk:
    k = online()
    k.feed(ev.Disconnected(AuthError("wss://api.openai.com/v1/realtime", 401)))
    assert k.phase == "fault"
    return k


@pytest.mark.parametrize("reach", [reach_offline, reach_connecting, reach_fault])
def test_press_without_session_plays_offline_prompt(reach: Callable[[], Kiosk]) -> None:
    """Pressed while OFFLINE / CONNECTING / FAULT → offline earcon, turn.rejected, nothing sent, phase unchanged."""
    k = reach()
    phase = k.phase
    k.mic(200)
    out = k.press(after_s=1.0)
    assert kinds(out) == ["PlayEarcon"] and earcons(out) == [ev.Earcon.OFFLINE]
    assert notes(out)["turn.rejected"].fields["phase"] == phase
    assert k.phase == phase
    assert k.counters()["rejected"] == 1
    assert k.release(after_s=0.5) == []


def test_rejected_press_is_not_queued() -> None:
    """A press rejected while connecting does not start a turn once the session is ready."""
    k = reach_connecting()
    k.press()
    k.feed(ev.SessionCreated("sess_1", None))
    out = k.feed(ev.SessionUpdated(None))
    assert send_types(out) == []
    assert k.phase == "idle"


# ================================================================================================ disconnects


def reach_listening(k: Kiosk) -> None:
    k.press(after_s=1.0)
    k.mic(100)


def reach_waiting(k: Kiosk) -> None:
    ask(k)


def reach_speaking(k: Kiosk) -> None:
    ask(k)
    speaking(k)


@pytest.mark.parametrize("reach", [reach_listening, reach_waiting, reach_speaking])
def test_disconnect_mid_turn_apologises_and_recovers(reach: Callable[[Kiosk], None]) -> None:
    """Disconnected mid-turn → apology, OFFLINE, LED offline, reconnect armed; the next press after reconnect works."""
    k = online()
    reach(k)
    was = k.phase
    out = k.feed(ev.Disconnected(ConnectionLost(1006)), after_s=0.1)
    assert earcons(out) == [ev.Earcon.APOLOGY]
    assert ("Interrupt" in kinds(out)) == (was == "speaking")
    assert leds(out) == [ev.Led.OFFLINE]
    assert arms(out) == {ev.Timer.RECONNECT: pytest.approx(k.now + 0.5)}
    assert send_types(out) == []
    assert k.phase == "offline"
    if was == "speaking":
        assert sends(k.feed(ev.Played("item_1", 300))) == []  # no socket: nothing to truncate
    for stale in (ev.Timeout(ev.Timer.HOLD_CAP), ev.Timeout(ev.Timer.REPLY_WAIT), ev.Timeout(ev.Timer.REPLY_CAP)):
        assert k.feed(stale, after_s=1.0) == []  # all turn timers were disarmed
    assert k.release() == []
    k.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=0.5)
    k.feed(ev.SessionCreated("sess_2", None))
    k.feed(ev.SessionUpdated(None))
    assert k.phase == "idle"
    out = ask(k)
    assert send_types(out)[-2:] == ["input_audio_buffer.commit", "response.create"]
    k.feed(ev.ResponseCreated("resp_9"))
    assert len(plays(k.feed(delta("resp_9", "item_9", 200)))) == 1


def reconnect_delay(k: Kiosk, cause: BaseException, online_for_s: float) -> float:
    """Stay online for ``online_for_s``, drop, reconnect; return the reconnect delay the drop armed."""
    out = k.feed(ev.Disconnected(cause), after_s=online_for_s)
    delay_s = arms(out)[ev.Timer.RECONNECT] - k.now
    k.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=delay_s)
    k.feed(ev.SessionCreated("sess_n", None))
    k.feed(ev.SessionUpdated(None))
    return delay_s


def test_backoff_grows_on_quick_drops_and_resets_after_a_healthy_minute() -> None:
    """Drops back off 0.5, 1.75, 3.5 s; a drop after a healthy minute starts again at 0.5 s."""
    k = online()
    drops = [reconnect_delay(k, ConnectionLost(1011), 10.0) for _ in range(3)]
    assert drops == pytest.approx([0.5, 1.75, 3.5])
    assert reconnect_delay(k, ConnectionLost(1011), SETTINGS.healthy_after_s + 1) == pytest.approx(0.5)


def test_quick_failures_in_a_row_are_a_fault() -> None:
    """The quick-failure rule: sessions that die within quick_failure_s of being ready, three times in a row,
    mean a broken endpoint or config: FAULT with the error LED and the slow retry, not a fast loop."""
    k = online()
    assert reconnect_delay(k, ConnectionLost(1011), 1.0) == pytest.approx(0.5)
    assert reconnect_delay(k, ConnectionLost(1011), 1.0) == pytest.approx(1.75)
    out = k.feed(ev.Disconnected(ConnectionLost(1011)), after_s=1.0)
    assert k.phase == "fault" and ev.Led.ERROR in leds(out)
    assert arms(out)[ev.Timer.RECONNECT] == k.now + SETTINGS.fault_retry_s


def test_a_session_that_served_a_response_is_not_a_quick_failure() -> None:
    """Drops mid-reply on sessions that did answer (a flaky link, not a broken endpoint) never add up to FAULT."""
    k = online()
    for n in range(4):
        ask(k)
        k.feed(ev.ResponseCreated(f"resp_{n}"))
        out = k.feed(ev.Disconnected(ConnectionLost(1006)), after_s=1.0)
        assert k.phase == "offline"
        k.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=arms(out)[ev.Timer.RECONNECT] - k.now)
        k.feed(ev.SessionCreated("sess_n", None))
        k.feed(ev.SessionUpdated(None))


def test_a_reload_reconnects_from_fault_and_renews_a_changed_session_at_idle() -> None:
    """systemctl reload in FAULT (say, a rotated key) reconnects at once; in IDLE a changed voice renews the
    session; mid-turn the renewal waits for IDLE."""
    k = online()
    k.feed(ev.Disconnected(AuthError("wss://x", 401)))
    out = k.feed(ev.Reloaded(session_changed=False), after_s=1.0)
    assert ev.Connect() in out and k.phase == "connecting"
    k.feed(ev.SessionCreated("sess_2", None))
    k.feed(ev.SessionUpdated(None))
    out = k.feed(ev.Reloaded(session_changed=True))
    assert ev.Close(1000) in out and ev.Connect() in out
    k.feed(ev.SessionCreated("sess_3", None))
    k.feed(ev.SessionUpdated(None))
    ask(k)
    assert k.feed(ev.Reloaded(session_changed=True)) == []
    k.feed(ev.ResponseCreated("resp_1"))
    out = k.feed(done("resp_1", "failed"))
    assert ev.Connect() in out and k.phase == "connecting"


def test_disconnect_in_idle_has_no_apology() -> None:
    """Disconnected in IDLE → OFFLINE with LED offline and a reconnect, but no earcon."""
    k = online()
    out = k.feed(ev.Disconnected(ConnectionLost(1001, "session expired")))
    assert earcons(out) == [] and leds(out) == [ev.Led.OFFLINE]
    assert k.phase == "offline"


def test_disconnect_while_connecting_goes_offline() -> None:
    """Disconnected while CONNECTING (handshake failed) → OFFLINE, connect timer disarmed, reconnect armed."""
    k = reach_connecting()
    out = k.feed(ev.Disconnected(OSError("connection refused")))
    assert ev.Disarm(ev.Timer.CONNECT) in out
    assert ev.Timer.RECONNECT in arms(out)
    assert k.phase == "offline"
    assert k.feed(ev.Timeout(ev.Timer.CONNECT), after_s=10.0) == []


def test_auth_error_goes_to_fault() -> None:
    """Disconnected(AuthError) → FAULT, LED error, reconnect only at the slow fault delay."""
    k = online()
    ask(k)
    out = k.feed(ev.Disconnected(AuthError("wss://api.openai.com/v1/realtime", 401)))
    assert leds(out) == [ev.Led.ERROR]
    assert arms(out) == {ev.Timer.RECONNECT: k.now + SETTINGS.fault_retry_s}
    assert earcons(out) == [ev.Earcon.APOLOGY]
    assert notes(out)["ws.fault"].level == "error"
    assert k.m.status()["phase"] == "fault"
    assert k.m.status()["connection"] == "fault"
    out = k.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=SETTINGS.fault_retry_s)
    assert kinds(out) == ["Connect", "Arm"]
    assert k.phase == "connecting"


@pytest.mark.parametrize("reach", [lambda k: None, reach_waiting, reach_speaking])
def test_fatal_server_error_goes_to_fault(reach: Callable[[Kiosk], None]) -> None:
    """ServerError invalid_api_key → FAULT with LED error."""
    k = online()
    reach(k)
    out = k.feed(ev.ServerError("invalid_api_key", "Incorrect API key provided", "invalid_request_error", None))
    assert leds(out) == [ev.Led.ERROR]
    assert k.phase == "fault"


def test_fatal_server_error_while_connecting_goes_to_fault() -> None:
    """ServerError unknown_parameter in reply to session.update → FAULT (a config or kioskd bug)."""
    k = reach_connecting()
    k.feed(ev.SessionCreated("sess_1", None))
    out = k.feed(ev.ServerError("unknown_parameter", "Unknown parameter: 'session.x'.", "invalid_request_error", "e"))
    assert leds(out) == [ev.Led.ERROR]
    assert k.phase == "fault"


@pytest.mark.parametrize("code", ["response_cancel_not_active", "invalid_value", "input_audio_buffer_commit_empty",
                                  "conversation_already_has_active_response"])
@pytest.mark.parametrize("reach", [lambda k: None, reach_listening, reach_waiting, reach_speaking])
def test_benign_server_error_is_only_a_warning(code: str, reach: Callable[[Kiosk], None]) -> None:
    """A benign server error code → one warning note; no phase change, nothing sent, no LED change."""
    k = online()
    reach(k)
    phase = k.phase
    out = k.feed(ev.ServerError(code, "whatever", "invalid_request_error", "kioskd_7"))
    assert kinds(out) == []
    assert [(n.name, n.level) for n in notes(out).values()] == [("ws.server_error", "warning")]
    assert k.phase == phase


# ================================================================================================ caps


def test_hold_cap_commits() -> None:
    """Timeout(hold_cap) while LISTENING → commit and response.create as if released; the late release is ignored."""
    k = online()
    k.press(after_s=1.0)
    k.mic(300)
    out = k.feed(ev.Timeout(ev.Timer.HOLD_CAP), after_s=SETTINGS.hold_cap_s)
    assert send_types(out)[-2:] == ["input_audio_buffer.commit", "response.create"]
    assert notes(out)["turn.hold_cap"].level == "warning"
    assert leds(out) == [ev.Led.THINKING]
    assert k.phase == "waiting"
    assert k.release(after_s=2.0) == []
    assert k.phase == "waiting"


@pytest.mark.parametrize("created", [False, True])
def test_reply_wait_cancels_apologises_and_idles(created: bool) -> None:
    """Timeout(reply_wait) → response.cancel (by id once known), apology, turn.timeout, IDLE."""
    k = online()
    ask(k)
    if created:
        k.feed(ev.ResponseCreated("resp_1"))
    out = k.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=SETTINGS.reply_wait_s)
    assert send_types(out) == ["response.cancel"]
    assert sends(out)[0].get("response_id") == ("resp_1" if created else None)
    assert earcons(out) == [ev.Earcon.APOLOGY]
    assert "turn.timeout" in notes(out)
    assert leds(out) == [ev.Led.IDLE]
    assert k.phase == "idle"
    # the abandoned response's audio, if it ever comes, is not played
    k.feed(ev.ResponseCreated("resp_1"))
    assert plays(k.feed(delta("resp_1", "item_1", 200))) == []


def test_next_turn_speaks_after_a_response_that_never_started() -> None:
    """reply_wait after a response.create the server rejected → the next turn's reply still plays."""
    k = online()
    ask(k)
    k.feed(ev.ServerError("server_error", "The server had an error.", "server_error", "kioskd_20"))
    k.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=SETTINGS.reply_wait_s)
    k.feed(ev.ServerError("response_cancel_not_active", "no active response", "invalid_request_error", None))
    assert k.phase == "idle"
    ask(k)
    k.feed(ev.ResponseCreated("resp_2"))
    out = k.feed(delta("resp_2", "item_2", 200))
    assert [p.item_id for p in plays(out)] == ["item_2"]
    assert k.phase == "speaking"


def test_reply_cap_interrupts_cancels_and_truncates() -> None:
    """Timeout(reply_cap) → Interrupt, response.cancel, IDLE; the Played that follows sends the truncate only."""
    k = online()
    ask(k)
    speaking(k, ms=1200)
    out = k.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=SETTINGS.reply_cap_s)
    assert kinds(out)[:2] == ["Interrupt", "Send"]
    assert send_types(out) == ["response.cancel"] and sends(out)[0]["response_id"] == "resp_1"
    assert leds(out) == [ev.Led.IDLE]
    assert k.phase == "idle"
    out = k.feed(ev.Played("item_1", 800))
    assert [(e["type"], e.get("audio_end_ms")) for e in sends(out)] == [("conversation.item.truncate", 800)]
    assert plays(k.feed(delta("resp_1", "item_1", 200))) == []


def test_reply_cap_after_response_done_does_not_cancel() -> None:
    """Timeout(reply_cap) after ResponseDone → Interrupt but no response.cancel."""
    k = online()
    ask(k)
    speaking(k)
    k.feed(done("resp_1"))
    out = k.feed(ev.Timeout(ev.Timer.REPLY_CAP), after_s=SETTINGS.reply_cap_s)
    assert "Interrupt" in kinds(out) and send_types(out) == []


# ================================================================================================ bounce


def test_press_within_rearm_window_is_a_bounce() -> None:
    """A press 20 ms after the release is ignored (no barge-in on the turn just committed); 60 ms later it counts."""
    k = online()
    ask(k)
    out = k.press(after_s=0.02)
    assert kinds(out) == [] and send_types(out) == []
    assert k.phase == "waiting"
    assert k.counters()["bounces"] == 1
    out = k.press(after_s=0.04)  # 60 ms after the release
    assert send_types(out) == ["response.cancel", "input_audio_buffer.clear"]
    assert k.phase == "listening"


def test_release_in_idle_is_ignored() -> None:
    """Released in IDLE (its press was bounced or rejected) → nothing."""
    k = online()
    assert k.release(after_s=1.0) == []
    assert k.phase == "idle"


# ================================================================================================ table walk

# Every phase, reached through real inputs, in the states that matter (timers armed, awaiting Played...).


def _idle() -> Kiosk:
    return online(expires_in_s=3600.0)


def _listening() -> Kiosk:
    k = _idle()
    reach_listening(k)
    return k


def _listening_after_barge_in() -> Kiosk:
    k = _idle()
    reach_speaking(k)
    k.press(after_s=0.2)
    k.feed(ev.Played("item_1", 300))
    return k


def _waiting() -> Kiosk:
    k = _idle()
    ask(k)
    k.feed(ev.ResponseCreated("resp_1"))
    return k


def _speaking() -> Kiosk:
    k = _idle()
    reach_speaking(k)
    return k


def _speaking_drained() -> Kiosk:
    """SPEAKING with the audio done and played out, waiting for response.done."""
    k = _speaking()
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(ev.PlaybackDrained(0))
    return k


def _speaking_response_done() -> Kiosk:
    """SPEAKING with response.done in, waiting for the drain."""
    k = _speaking()
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(done("resp_1"))
    return k


SCENARIOS: dict[str, Callable[[], Kiosk]] = {
    "connecting": reach_connecting,
    "offline": reach_offline,
    "fault": reach_fault,
    "idle": _idle,
    "listening": _listening,
    "listening_after_barge_in": _listening_after_barge_in,
    "waiting": _waiting,
    "speaking": _speaking,
    "speaking_drained": _speaking_drained,
    "speaking_response_done": _speaking_response_done,
}


def test_table_walk_reaches_every_phase() -> None:
    """The walk's scenarios, built from real inputs, cover every Phase."""
    assert {SCENARIOS[name]().phase for name in SCENARIOS} == {p.value for p in Phase}


def local_inputs(k: Kiosk) -> dict[str, ev.Input]:
    out: dict[str, ev.Input] = {
        "Pressed": ev.Pressed(k.now + 1.0),
        "Released": ev.Released(k.now + 1.0),
        "MicBlock": ev.MicBlock(np.zeros(480, np.int16)),
        "Played": ev.Played("item_1", 100),
        "Played(None)": ev.Played(None, 0),
        "PlaybackDrained": ev.PlaybackDrained(0),
        "PlaybackStarted": ev.PlaybackStarted(k.now),
    }
    for timer in ev.Timer:
        out[f"Timeout({timer.value})"] = ev.Timeout(timer)
    return out


def remote_inputs() -> dict[str, ev.Input]:
    return {
        "Connected": ev.Connected(),
        "Disconnected(retry)": ev.Disconnected(ConnectionLost(1006)),
        "Disconnected(fatal)": ev.Disconnected(AuthError("wss://x", 401)),
        "SessionCreated": ev.SessionCreated("sess_x", 2e9, 3600.0),
        "SessionUpdated": ev.SessionUpdated(None),
        "SessionUpdated(vad)": ev.SessionUpdated({"type": "server_vad"}),
        "InputCommitted": ev.InputCommitted("item_u"),
        "ResponseCreated(current)": ev.ResponseCreated("resp_1"),
        "ResponseCreated(other)": ev.ResponseCreated("resp_x"),
        "AudioDelta(current)": delta("resp_1", "item_1", 20),
        "AudioDelta(other)": delta("resp_x", "item_x", 20),
        "AudioDone(current)": ev.AudioDone("resp_1", "item_1"),
        "AudioDone(other)": ev.AudioDone("resp_x", "item_x"),
        "TranscriptDone": ev.TranscriptDone("resp_1", "item_1", "hello"),
        "ResponseDone(current)": done("resp_1"),
        "ResponseDone(cancelled)": done("resp_1", "cancelled"),
        "ResponseDone(other)": done("resp_x"),
        "ItemTruncated": ev.ItemTruncated("item_1", 300),
        "ServerError(benign)": ev.ServerError("response_cancel_not_active", "m", "invalid_request_error", None),
        "ServerError(fatal)": ev.ServerError("invalid_api_key", "m", "invalid_request_error", None),
        "ServerError(retry)": ev.ServerError("server_error", "m", "server_error", None),
        "ServerError(none)": ev.ServerError(None, "(no message)", None, None),
        "ServerEvent": ev.ServerEvent("rate_limits.updated"),
        "Unknown": ev.Unknown("response.mcp_call.in_progress"),
        "BadEvent": ev.BadEvent("response.output_audio.delta", "bad base64 audio"),
    }


#: (scenario, local input) pairs that raise LocalProtocolError: each a "can't happen" (none today: a second
#: press while held, which the button adapter never posts, is ignored rather than treated as a bug)
EXPECTED_LOCAL_ERRORS: frozenset[tuple[str, str]] = frozenset()
_ACTION_TYPES = typing.get_args(ev.Action)


def _walk_params(names: Iterable[str]) -> list[Any]:
    params = []
    for scenario in SCENARIOS:
        for name in names:
            params.append(pytest.param(scenario, name, id=f"{scenario}-{name}"))
    return params


_LOCAL_NAMES = list(local_inputs(Kiosk()).keys())


@pytest.mark.parametrize(("scenario", "name"), _walk_params(_LOCAL_NAMES))
def test_table_walk_local(scenario: str, name: str) -> None:
    """Every local input in every phase returns actions, or raises LocalProtocolError and changes nothing."""
    k = SCENARIOS[scenario]()
    inp = local_inputs(k)[name]
    before = k.m.status()
    if (scenario, name) in EXPECTED_LOCAL_ERRORS:
        with pytest.raises(LocalProtocolError):
            k.feed(inp, after_s=1.0)
        assert k.m.status() == before  # a rejected input changes nothing
        return
    out = k.feed(inp, after_s=1.0)
    assert all(isinstance(a, _ACTION_TYPES) for a in out)


@pytest.mark.parametrize(("scenario", "name"), _walk_params(remote_inputs().keys()))
def test_table_walk_remote(scenario: str, name: str) -> None:
    """Every remote input in every phase returns actions and never raises."""
    k = SCENARIOS[scenario]()
    out = k.feed(remote_inputs()[name], after_s=1.0)
    assert all(isinstance(a, _ACTION_TYPES) for a in out)


# ------------------------------------------------------------------------------------------------ review fixes


def test_offline_prompts_do_not_pile_up() -> None:
    """Presses while offline get one prompt per second at most, so none queue up into the next question."""
    k = Kiosk()
    k.begin()
    first = k.press()
    k.release(after_s=0.2)
    second = k.press(after_s=0.2)
    k.release(after_s=0.2)
    third = k.press(after_s=1.0)
    assert [earcons(a) for a in (first, second, third)] == [[ev.Earcon.OFFLINE], [], [ev.Earcon.OFFLINE]]
    assert k.counters()["rejected"] == 3


def test_a_refused_session_update_is_a_fault_not_a_retry_loop() -> None:
    """An error naming our session.update (e.g. an unknown voice) → FAULT with the error LED, slow retry."""
    k = Kiosk()
    k.begin()
    out = k.feed(ev.SessionCreated("sess_1", None))
    update_id = sends(out)[0]["event_id"]
    out = k.feed(ev.ServerError("invalid_value", "Invalid value: 'robot'.", "invalid_request_error", update_id))
    assert k.phase == "fault"
    assert ev.Led.ERROR in leds(out) and "ws.fault" in notes(out)
    assert arms(out)[ev.Timer.RECONNECT] == k.now + SETTINGS.fault_retry_s


def test_an_implausible_session_lifetime_is_clamped_and_said() -> None:
    """A local clock far off gives a negative or huge lifetime: kioskd assumes 60 min and warns, instead of
    recycling in a tight loop."""
    k = Kiosk()
    k.begin()
    out = k.feed(ev.SessionCreated("sess_1", 1.0, expires_in_s=-500.0))
    assert "ws.clock_skew" in notes(out)
    out = k.feed(ev.SessionUpdated(turn_detection=None))
    assert arms(out)[ev.Timer.RECYCLE] == k.now + 3600 - SETTINGS.recycle_margin_s


def test_a_new_question_waits_for_the_cancelled_response_to_end() -> None:
    """Barge-in while WAITING, then a quick new question: response.create is sent only once the cancelled
    response's response.done arrives (never conversation_already_has_active_response)."""
    k = online()
    ask(k)
    k.feed(ev.ResponseCreated("resp_1"))
    k.press(after_s=0.2)
    k.mic(300)
    out = k.release()
    assert "response.create" not in send_types(out)
    out = k.feed(done("resp_1", "cancelled"))
    assert send_types(out) == ["response.create"]
    k.feed(ev.ResponseCreated("resp_2"))
    assert [p.item_id for p in plays(k.feed(delta("resp_2", "item_2", 200)))] == ["item_2"]


def test_press_and_thinking_earcons() -> None:
    """A press from IDLE is acknowledged by a short earcon; a reply slower than thinking_cue_s gets one soft
    "thinking" earcon; a reply that comes sooner cancels the cue; earcons: false silences them all."""
    k = online()
    assert earcons(k.press()) == [ev.Earcon.PRESS]
    k.mic(300)
    k.release()
    assert earcons(k.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=SETTINGS.thinking_cue_s)) == [ev.Earcon.THINKING]
    quick = online()
    quick.press()
    quick.mic(300)
    quick.release()
    quick.feed(ev.ResponseCreated("resp_1"))
    out = quick.feed(delta("resp_1", "item_1", 100))
    assert ev.Disarm(ev.Timer.THINKING_CUE) in out
    assert quick.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=5) == []
    silent = online(TurnSettings(earcons=False))
    assert earcons(silent.press()) == []


def test_a_whole_answer_resets_the_backoff() -> None:
    """After drops grew the backoff, a session that serves a visitor in full starts the next backoff afresh."""
    k = online()
    assert [reconnect_delay(k, ConnectionLost(1011), 10.0) for _ in range(2)] == pytest.approx([0.5, 1.75])
    ask(k)
    speaking(k)
    k.feed(ev.AudioDone("resp_1", "item_1"))
    k.feed(done("resp_1"))
    k.feed(ev.PlaybackDrained())
    assert k.phase == "idle"
    assert reconnect_delay(k, ConnectionLost(1011), 10.0) == pytest.approx(0.5)
