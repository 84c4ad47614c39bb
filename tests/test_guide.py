"""The museum guide end to end: `kioskd run` with the example exhibit's files against the simulator on a real
socket (which calls the declared tool, as the model would), audio on null sinks, an http tool on a real aiohttp
server. What is asserted is what crossed the wire and what the visitor heard, never timing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kioskd.core.pcm import tone
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, SimThread, wait_for, write_wav
from kioskd.sim.realtime_server import SimOptions
from tests.conftest import REPO, UNIT_S

EXAMPLES = REPO / "config" / "examples"
FAST = {"voice": "tone", "reply_ms": 800, "first_delta_delay_ms": 50, "speedup": 4.0}


def guide(tmp_path: Path, options: SimOptions, exhibit: str,
          transport: str = "websocket") -> tuple[SimThread, KioskdProcess, Path]:
    thread = SimThread(options, transport=transport)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {thread.sim.url}\n  transport: {transport}\n"
                                    f"{NULL_SINK_AUDIO}exhibit:\n{exhibit}log:\n  format: json\n")
    question = write_wav(tmp_path / "q.wav", tone(300, 400, 48000, 0.4), 48000)
    kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
    return thread, kiosk, question


def sent(thread: SimThread, type_: str) -> list[dict[str, Any]]:
    return [e for e in thread.sim.client_events if e.get("type") == type_]


def answered(kiosk: KioskdProcess, question: Path) -> dict[str, Any]:
    """Ask, and wait for the turn's line."""
    before = len(kiosk.events("turn.done"))
    kiosk.ask(question)
    wait_for(lambda: len(kiosk.events("turn.done")) > before, "the turn's line", 30 * UNIT_S)
    return kiosk.events("turn.done")[-1]


@pytest.mark.parametrize(("preamble_ms", "transport"), [
    (0, "websocket"), (300, "websocket"),
    pytest.param(300, "webrtc", marks=pytest.mark.skipif(importlib.util.find_spec("aiortc") is None,
                                                         reason="the webrtc extra is not installed"))])
def test_a_question_is_answered_from_the_exhibits_knowledge(tmp_path: Path, preamble_ms: int,
                                                           transport: str) -> None:
    """The session declares the knowledge lookup and says when to use it; the model's call is answered
    locally from the curator's entries (the mosaic's date), one response.create follows the output, and the
    visitor hears the answer, which speaks the entry; turn.done names the tool. Over WebRTC too: the calling
    response's end is held until its spoken preamble has come down the track, and the answer follows it."""
    options = SimOptions(**FAST, tool_call="lookup_exhibit_knowledge", preamble_ms=preamble_ms,
                         tool_arguments='{"query": "How old is the mosaic?"}')
    thread, kiosk, question = guide(tmp_path, options, f"  name: The Dolphin Mosaic\n"
                                                        f"  knowledge_file: {EXAMPLES / 'knowledge.yaml'}\n",
                                    transport)
    try:
        session = sent(thread, "session.update")[-1]["session"]
        assert [t["name"] for t in session["tools"]] == ["lookup_exhibit_knowledge"]
        assert "call lookup_exhibit_knowledge first" in session["instructions"]
        assert "The Dolphin Mosaic" in session["instructions"]
        assert session["truncation"]["token_limits"] == {"post_instructions": 4000}
        line = answered(kiosk, question)
    finally:
        kiosk.stop()
        thread.close()
    assert line["outcome"] == "answered" and line["tools"] == ["lookup_exhibit_knowledge"]
    assert line["responses"] == 2
    if transport == "websocket":
        assert line["reply_ms"] == preamble_ms + 800
    else:  # Opus frames of 20 ms, the codec's delay and the idle silence trimmed at both ends
        assert line["reply_ms"] == pytest.approx(preamble_ms + 800, abs=60)
    [output] = [e["item"] for e in sent(thread, "conversation.item.create")]
    assert output["type"] == "function_call_output"
    found = json.loads(output["output"])
    assert found["found"] is True and "320 AD" in found["entries"][0]["text"]
    creates = sent(thread, "response.create")
    assert len(creates) == 2  # the question's, then one after the output
    answer = [e for e in thread.sim.server_events if e["type"] == "response.output_audio_transcript.done"][-1]
    assert "320 AD" in answer["transcript"]


def test_a_question_the_knowledge_does_not_cover_gets_an_explicit_no_entry(tmp_path: Path) -> None:
    options = SimOptions(**FAST, tool_call="lookup_exhibit_knowledge",
                         tool_arguments='{"query": "What is the capital of France?"}')
    thread, kiosk, question = guide(tmp_path, options, f"  knowledge_file: {EXAMPLES / 'knowledge.yaml'}\n")
    try:
        assert answered(kiosk, question)["outcome"] == "answered"
    finally:
        kiosk.stop()
        thread.close()
    [output] = [e["item"] for e in sent(thread, "conversation.item.create")]
    assert json.loads(output["output"])["found"] is False


class Museum:
    """The museum's own system for an http tool: a real aiohttp server on loopback, in a thread."""

    def __init__(self, delay_s: float = 0.0, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delay_s, self.status = delay_s, status
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def tours(request: web.Request) -> web.Response:
            self.requests.append(await request.json())
            await asyncio.sleep(self.delay_s)
            return web.json_response({"next_tour": "14:30", "language": "English"}, status=self.status)

        app = web.Application()
        app.router.add_post("/tours", tours)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def museum_factory() -> Iterator[Any]:
    made: list[Museum] = []

    def make(**kwargs: Any) -> Museum:
        made.append(Museum(**kwargs))
        return made[-1]

    yield make
    for m in made:
        m.close()


@pytest.mark.parametrize(("delay_s", "status", "error"), [(0.0, 200, None), (0.0, 503, "HTTP 503"),
                                                         (3.0, 200, "no answer within 1 s")])
def test_an_http_tool_posts_to_the_museum_and_a_failing_one_says_so(
        tmp_path: Path, museum_factory: Any, delay_s: float, status: int, error: str | None) -> None:
    """The model's arguments are POSTed to the museum's URL and its JSON answer goes back; a failing or slow
    system becomes an output that says so (the visitor still gets an answer), logged once as tool.failed."""
    museum = museum_factory(delay_s=delay_s, status=status)
    tools = tmp_path / "tools.yaml"
    tools.write_text("- type: http\n  name: next_tour\n  description: When the next guided tour starts.\n"
                     "  parameters:\n    type: object\n    properties:\n      language: {type: string}\n"
                     f"  url: http://127.0.0.1:{museum.port}/tours\n  timeout_s: 1\n")
    options = SimOptions(**FAST, tool_call="next_tour", tool_arguments='{"language": "English"}')
    thread, kiosk, question = guide(tmp_path, options, f"  tools_file: {tools}\n")
    try:
        line = answered(kiosk, question)
    finally:
        kiosk.stop()
        thread.close()
    assert line["outcome"] == "answered" and line["tools"] == ["next_tour"]
    assert museum.requests == [{"language": "English"}]
    [output] = [json.loads(e["item"]["output"]) for e in sent(thread, "conversation.item.create")]
    if error is None:
        assert output == {"next_tour": "14:30", "language": "English"} and not kiosk.events("tool.failed")
    else:
        assert error in output["error"]
        [failed] = kiosk.events("tool.failed")
        assert failed["level"] == "warning" and failed["name"] == "next_tour" and error in failed["cause"]


def test_each_visitor_starts_a_fresh_conversation_and_a_family_keeps_theirs(tmp_path: Path) -> None:
    """Two visitors a quiet apart: the conversation is emptied while idle (conversation.reset), so the second
    visitor's question reaches the model alone and costs what the first one's did; two questions in quick
    succession (a family) reach it together."""
    thread, kiosk, question = guide(tmp_path, SimOptions(**FAST), "  name: The Dolphin Mosaic\n"
                                    "conversation:\n  new_visitor_after_s: 1\n")
    try:
        first = answered(kiosk, question)
        wait_for(lambda: bool(kiosk.events("conversation.reset")), "conversation.reset", 10 * UNIT_S)
        second = answered(kiosk, question)
        family = answered(kiosk, question)  # asked at once: the same visitor
    finally:
        kiosk.stop()
        thread.close()
    [reset] = kiosk.events("conversation.reset")
    assert reset["reason"] == "new visitor" and reset["items"] == 2
    deleted = [e["item_id"] for e in sent(thread, "conversation.item.delete")]
    first_ctx, second_ctx, family_ctx = thread.sim.contexts
    assert len(first_ctx) == 1 and len(deleted) == 2 and first_ctx[0] in deleted  # its question and answer
    assert len(second_ctx) == 1 and not set(second_ctx) & set(deleted)  # only the second visitor's question
    assert len(family_ctx) == 3  # the family's first question and answer, then its second question
    # flat: the second visitor does not pay for the first (their questions differ by a few ms of audio)
    assert abs(second["usage"]["input_tokens"] - first["usage"]["input_tokens"]) <= 5
    assert family["usage"]["input_tokens"] > second["usage"]["input_tokens"] + 10  # re-bills the family's turn


def test_the_offline_prompt_is_spoken(tmp_path: Path) -> None:
    """A press the kiosk cannot answer (the service refuses the key: FAULT) is answered with the packaged spoken
    prompt, heard at the speaker for seconds (the tone it replaces lasts under half a second)."""
    import numpy as np

    from kioskd.sim.harness import Room

    key = tmp_path / "key"
    key.write_text("the-wrong-key")
    key.chmod(0o600)
    room = Room()
    thread = SimThread(SimOptions(api_key="the-right-key"))
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {thread.sim.url}\n  api_key_file: {key}\n"
                                    f"{NULL_SINK_AUDIO}log:\n  format: json\n")
    try:
        kiosk.wait_phase("fault", timeout_s=20 * UNIT_S)
        room.take()
        kiosk.ctl("press")
        kiosk.ctl("release")
        wait_for(lambda: room.samples() > 5 * Room.RATE_HZ, "five seconds of the room", 20 * UNIT_S)
        _, heard = room.take()
    finally:
        kiosk.stop()
        thread.close()
        room.close()
    blocks = np.abs(heard[: heard.size // 480 * 480].astype(np.int32)).reshape(-1, 480).max(axis=1)
    sounding = np.flatnonzero(blocks > 300)
    assert sounding.size and (sounding[-1] - sounding[0]) * 10 > 2500  # a sentence, not a two-tone earcon
    assert not kiosk.events("prompts.unusable")


def test_every_turn_is_priced_and_the_days_total_survives_a_restart(tmp_path: Path) -> None:
    """turn.done carries the model and cost_usd (the simulator's usage at gpt-realtime prices); kioskctl status
    sums the day; a restarted kioskd (same state directory) still knows the day's total."""
    thread, kiosk, question = guide(tmp_path, SimOptions(**FAST), "  name: The Dolphin Mosaic\n")
    try:
        lines = [answered(kiosk, question), answered(kiosk, question)]
        status = kiosk.ctl("status")["cost"]
        stats = kiosk.ctl("stats")["arms"]["realtime/gpt-realtime"]
    finally:
        kiosk.stop()
    assert all(line["model"] == "gpt-realtime" and line["cost_usd"] > 0 for line in lines)
    total = round(sum(line["cost_usd"] for line in lines), 6)
    assert status["today_usd"] == pytest.approx(total) and status["turns_today"] == 2
    assert stats["turns"] == 2 and stats["cost_per_turn_usd"] == pytest.approx(total / 2, abs=1e-6)
    assert stats["release_to_first_sound_ms"]["p50"] in [line["release_to_first_sound_ms"] for line in lines]
    again = KioskdProcess(tmp_path, f"realtime:\n  url: {thread.sim.url}\n{NULL_SINK_AUDIO}log:\n  format: json\n")
    try:
        again.wait_phase("idle", timeout_s=20 * UNIT_S)
        assert again.ctl("status")["cost"]["today_usd"] == pytest.approx(total)
    finally:
        again.stop()
        thread.close()


def test_a_spent_budget_closes_the_kiosk_and_sends_nothing(tmp_path: Path) -> None:
    """A budget smaller than one turn: the first visitor is answered in full; then the kiosk is closed (status,
    LED), a press is refused with the closed prompt and nothing reaches the service."""
    thread, kiosk, question = guide(tmp_path, SimOptions(**FAST), "  name: The Dolphin Mosaic\n"
                                    "cost:\n  daily_budget_usd: 0.0001\n")
    try:
        assert answered(kiosk, question)["outcome"] == "answered"
        wait_for(lambda: kiosk.ctl("status")["phase"] == "closed", "the closed kiosk", 10 * UNIT_S)
        status = kiosk.ctl("status")
        sent_before = len(thread.sim.client_events)
        kiosk.ctl("press")
        wait_for(lambda: bool(kiosk.events("turn.rejected")), "the refused press", 10 * UNIT_S)
        kiosk.ctl("release")
        kiosk.wait_phase("closed", timeout_s=10 * UNIT_S)
    finally:
        kiosk.stop()
        thread.close()
    assert status["led"] == "closed" and status["cost"]["exhausted"] is True
    assert status["cost"]["budget_usd"] == 0.0001 and status["cost"]["today_usd"] > 0.0001
    assert kiosk.events("turn.rejected")[-1]["reason"] == "budget" and kiosk.events("cost.budget_spent")
    assert len(thread.sim.client_events) == sent_before  # nothing sent for the refused press
