"""The fallback end to end: `kioskd run` as systemd starts it, the Realtime simulator stopped and started on its
port, the Chat Completions simulator on loopback HTTP, PortAudio on null sinks. Every request kioskd sends the
fallback is checked against the openai package's own types (tests/chat_schema.py); nothing asserts timing."""

from __future__ import annotations

import base64
import contextlib
import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path

from kioskd.core.pcm import tone
from kioskd.sim.chat_server import ChatSimOptions
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, SimThread, wait_for, write_wav
from kioskd.sim.realtime_server import SimOptions
from tests.chat_schema import validate_request
from tests.conftest import UNIT_S

REALTIME = SimOptions(voice="tone", reply_ms=1500, first_delta_delay_ms=50, speedup=2.0)
CHAT = ChatSimOptions(voice="tone", reply_ms=1500, first_audio_delay_ms=100, speedup=2.0)


@contextlib.contextmanager
def floor(tmp_path: Path, chat: ChatSimOptions = CHAT) -> Iterator[tuple[SimThread, int, KioskdProcess, Path]]:
    """Both simulators and a kioskd using the Chat Completions one as its fallback; the Realtime one is stopped
    at once (its port is kept, to start it again there). A visitor is quiet for 1 s before the next is new."""
    realtime = SimThread(REALTIME)
    port = realtime.sim.port
    fallback = SimThread(chat)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {realtime.sim.url}\n  backoff_cap_s: 0.5\n"
                                    f"fallback:\n  url: {fallback.sim.url}\n"
                                    "conversation:\n  new_visitor_after_s: 1\n"
                                    f"{NULL_SINK_AUDIO}log:\n  format: json\n")
    question = write_wav(tmp_path / "q.wav", tone(300, 600, 48000, 0.4), 48000)
    try:
        wait_for(lambda: bool(kiosk.events("ws.ready")), "the Realtime link", 20 * UNIT_S)
        realtime.close()
        wait_for(lambda: bool(kiosk.events("ws.disconnected")), "the Realtime link to drop", 10 * UNIT_S)
        yield fallback, port, kiosk, question
    finally:
        kiosk.stop()
        fallback.close()


def turn(kiosk: KioskdProcess, question: Path) -> dict[str, object]:
    """Ask, wait for the turn's line, return it."""
    before = len(kiosk.events("turn.done"))
    kiosk.ask(question)
    wait_for(lambda: len(kiosk.events("turn.done")) > before, "the turn summary", 20 * UNIT_S)
    kiosk.wait_phase("idle", timeout_s=10 * UNIT_S)
    return kiosk.events("turn.done")[before]


def test_a_visitor_is_answered_by_the_fallback_while_realtime_is_down_then_realtime_takes_over(
        tmp_path: Path) -> None:
    with floor(tmp_path) as (fallback, port, kiosk, question):
        assert kiosk.phase() == "idle"  # answering presses, though the link is down
        first = turn(kiosk, question)
        assert (first["outcome"], first["backend"], first["model"], first["route"]) == (
            "answered", "chat", "gpt-audio-1.5", "fallback")
        assert first["reply_ms"] > 1000 and first["cost_usd"] > 0 and "usage_estimated" not in first
        (route,) = kiosk.events("turn.route")
        assert route["why"] == "fallback" and route["realtime"] in ("offline", "connecting")
        body = fallback.call(lambda: fallback.sim.requests[-1])
        validate_request(body)
        audio = body["messages"][-1]["content"][0]["input_audio"]
        with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as w:  # the held question, as WAV
            held_s = w.getnframes() / w.getframerate()
        assert audio["format"] == "wav" and 0.4 < held_s < 3.0

        realtime = SimThread(REALTIME, port=port)  # the Realtime API is back
        try:
            wait_for(lambda: len(kiosk.events("ws.ready")) >= 2,
                     "the Realtime link to come back", 20 * UNIT_S)
            kiosk.ctl("press")  # the same visitor, at once: still the fallback, with their conversation
            kiosk.ctl("release")
            second = turn(kiosk, question)
            assert second["backend"] == "chat"
            history = fallback.call(lambda: fallback.sim.requests[-1])["messages"]
            assert [m["role"] for m in history][:2] == ["system", "assistant"]  # the first answer, as text
            wait_for(lambda: bool(kiosk.events("conversation.reset")), "the visitor to leave", 10 * UNIT_S)
            third = turn(kiosk, question)  # the next visitor: Realtime again
            assert (third["backend"], third["route"], third["outcome"]) == ("realtime", "main", "answered")
            assert [r["backend"] for r in kiosk.events("turn.route")] == ["chat", "realtime"]
        finally:
            realtime.close()


def test_a_failing_fallback_apologises_and_the_next_press_tries_again(tmp_path: Path) -> None:
    with floor(tmp_path) as (fallback, _, kiosk, question):
        fallback.call(lambda: fallback.sim.arm_fault("status_500"))
        failed = turn(kiosk, question)
        assert failed["outcome"] == "failed" and str(failed["cause"]).startswith("response failed: HTTP 500 server_error")
        assert failed["level"] == "error" and failed["cost_usd"] == 0
        time.sleep(0.2)  # a real visitor's next press; one within turn.rearm_ms of the release is a bounce
        answered = turn(kiosk, question)
        assert answered["outcome"] == "answered" and answered["backend"] == "chat"


def test_a_barge_in_closes_the_fallback_stream_and_the_turn_is_billed_from_an_estimate(tmp_path: Path) -> None:
    slow = ChatSimOptions(voice="tone", reply_ms=20_000, first_audio_delay_ms=100)
    with floor(tmp_path, slow) as (fallback, _, kiosk, question):
        kiosk.ask(question)
        kiosk.wait_phase("speaking", timeout_s=10 * UNIT_S)
        kiosk.ctl("press")  # barge-in
        kiosk.ctl("release")
        wait_for(lambda: bool(kiosk.events("turn.done")), "the interrupted turn", 10 * UNIT_S)
        cut = kiosk.events("turn.done")[0]
        assert cut["outcome"] == "interrupted" and cut["usage_estimated"] == 1 and cut["cost_usd"] > 0
        wait_for(lambda: fallback.call(lambda: bool(fallback.sim.streams) and fallback.sim.streams[0].cancelled),
                 "the stream to be closed", 10 * UNIT_S)
        assert fallback.call(lambda: fallback.sim.streams[0].audio_ms) < 20_000


def test_degrade_switches_the_next_visitor_to_the_cheaper_model(tmp_path: Path) -> None:
    """Past cost.degrade_at of the budget, the Realtime session is renewed with cost.degrade_model once the visitor
    has left (its URL's model=), and the next visitor's turn is priced on it."""
    realtime = SimThread(REALTIME)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {realtime.sim.url}\n"
                                    "cost:\n  daily_budget_usd: 0.01\n  degrade_model: gpt-realtime-mini\n"
                                    "  degrade_at: 0.1\nconversation:\n  new_visitor_after_s: 1\n"
                                    f"{NULL_SINK_AUDIO}log:\n  format: json\n")
    question = write_wav(tmp_path / "q.wav", tone(300, 600, 48000, 0.4), 48000)
    try:
        kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
        first = turn(kiosk, question)
        assert first["model"] == "gpt-realtime" and first["cost_usd"] > 0.001  # past 10 % of $0.01
        wait_for(lambda: bool(kiosk.events("cost.degraded")), "the degrade", 10 * UNIT_S)
        wait_for(lambda: bool(kiosk.events("ws.model_switch")), "the visitor to leave", 10 * UNIT_S)
        wait_for(lambda: len(kiosk.events("ws.ready")) >= 2, "the renewed session", 10 * UNIT_S)
        second = turn(kiosk, question)
        assert second["model"] == "gpt-realtime-mini" and second["cost_usd"] < first["cost_usd"]
        models = realtime.call(lambda: [e["session"]["model"] for e in realtime.sim.server_events
                                        if e.get("type") == "session.created"])
        assert models == ["gpt-realtime", "gpt-realtime-mini"]
        assert kiosk.ctl("status")["session_model"] == "gpt-realtime-mini"
    finally:
        kiosk.stop()
        realtime.close()
