"""The fallback link (adapters/chat.py) on real loopback HTTP: hand-made aiohttp endpoints for what the simulator
never does (a compressed body, a barge-in racing the stream's end, a cancel before the request left), and every way
a reply can end reporting exactly one ResponseDone."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp import web

from kioskd.adapters.chat import ChatLink, ChatOptions, completions_url
from kioskd.core import events as ev
from kioskd.core.chat import ChatRequest
from tests.conftest import run

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


def link_for(url: str, got: list[ev.Input]) -> ChatLink:
    link = ChatLink(lambda: ChatOptions(url, ChatRequest("gpt-audio-1.5", "marin", "Be brief."), read_timeout_s=5),
                    got.append)
    link.start()
    return link


def ask(link: ChatLink) -> None:
    link.send(ev.StartQuestion())
    link.send(ev.AppendAudio(np.zeros(24000, np.int16)))
    link.send(ev.Commit())
    link.send(ev.RequestReply("req_1", True))


def dones(got: list[ev.Input]) -> list[ev.ResponseDone]:
    return [i for i in got if isinstance(i, ev.ResponseDone)]


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_url_gains_the_chat_completions_path_and_keeps_azures_query() -> None:
    assert completions_url("https://api.openai.com/v1/") == "https://api.openai.com/v1/chat/completions"
    assert completions_url("https://x.openai.azure.com/openai/deployments/guide?api-version=2025-01-01-preview") \
        == "https://x.openai.azure.com/openai/deployments/guide/chat/completions?api-version=2025-01-01-preview"


def test_a_barge_in_racing_the_streams_end_still_cuts_the_answer_to_what_was_heard() -> None:
    """The executor sends CancelReply and, at once, the Truncate of what was heard: the answer the cancelled
    stream keeps must be cut, so the next request carries only what the visitor heard."""
    words = " ".join(f"word{i}" for i in range(40))
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk({"role": "assistant", "audio": {"id": "audio_1", "transcript": words}}))
        for _ in range(100):
            await resp.write(chunk({"audio": {"data": base64.b64encode(np.ones(2400, "<i2").tobytes()).decode()}}))
            await asyncio.sleep(0.1)
        return resp

    async def body() -> None:
        runner, url = await serve(handler)
        got: list[ev.Input] = []
        link = link_for(url, got)
        try:
            ask(link)
            await until(lambda: sum(isinstance(i, ev.AudioDelta) for i in got) >= 3)
            link.send(ev.CancelReply("chat_resp_1"))
            link.send(ev.Truncate("chat_item_1", 100))  # heard 100 ms of ~300
            await until(lambda: bool(dones(got)))
            assert [(d.status, d.usage is not None and d.usage.get("estimated")) for d in dones(got)] == [
                ("cancelled", True)]
            ask(link)
            await until(lambda: len(bodies) == 2)
            kept = bodies[1]["messages"][1]["content"]
            assert kept.endswith("…") and len(kept) < len(words) / 2
        finally:
            await link.close()
            await runner.cleanup()

    run(body())


def test_a_compressed_body_is_never_inflated() -> None:
    """kioskd asks for the bytes as they are (Accept-Encoding: identity) and reads them raw: 48 MB packed into
    ~47 KB is refused as a broken stream, not inflated into memory (the service has MemoryMax=192M)."""
    packed = gzip.compress(b"x" * (48 << 20))
    asked: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=packed, headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})

    async def body() -> None:
        runner, url = await serve(handler)
        got: list[ev.Input] = []
        link = link_for(url, got)
        tracemalloc.start()
        try:
            ask(link)
            await until(lambda: bool(dones(got)), 60)
            peak = tracemalloc.get_traced_memory()[1]
            assert asked == ["identity"] and dones(got)[0].status == "failed"
            assert peak < 8 << 20, f"{peak >> 20} MB for a {len(packed) >> 10} KB body"
        finally:
            tracemalloc.stop()
            await link.close()
            await runner.cleanup()

    run(body(), 100)


def test_every_way_a_reply_ends_reports_one_response_done() -> None:
    """A cancel before the request left, a refused connection, an HTTP error (with the service's words), a page
    that is no event stream, a stream that stops before its answer did: each reply ends once, with its cause."""
    pages: list[web.Response] = [
        web.Response(status=429, body=json.dumps({"error": {"code": "rate_limit_exceeded", "message": "slow down"}}),
                     content_type="application/json"),
        web.Response(status=200, text="<html>Sign in to the museum Wi-Fi</html>", content_type="text/html"),
        web.Response(status=200, body=chunk({"audio": {"transcript": "Hel"}}), content_type="text/event-stream"),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        return pages.pop(0)

    async def body() -> None:
        got: list[ev.Input] = []
        link = link_for("http://127.0.0.1:9/v1", got)  # nothing listens on port 9
        ask(link)
        link.send(ev.CancelReply(None))  # in the same loop turn: the task never ran
        await until(lambda: len(dones(got)) == 1)
        assert (dones(got)[0].status, dones(got)[0].usage) == ("cancelled", {})
        ask(link)
        await until(lambda: len(dones(got)) == 2)
        assert dones(got)[1].status == "failed" and "ConnectError" in str(dones(got)[1].reason)
        await link.close()
        runner, url = await serve(handler)
        got.clear()
        link = link_for(url, got)
        try:
            for n in range(3):
                ask(link)
                await until(lambda: len(dones(got)) == n + 1)
            reasons = [(d.status, d.reason, d.usage) for d in dones(got)]
            assert reasons[0] == ("failed", "HTTP 429 rate_limit_exceeded: slow down", {})
            assert reasons[1][:2] == ("failed", "not an event stream: 'text/html; charset=utf-8'")
            assert reasons[1][2] == {}  # never reached the service: not billed
            assert reasons[2][:2] == ("failed", "the stream ended before its answer did (no [DONE])")
            assert reasons[2][2] is not None and reasons[2][2]["estimated"] is True
            assert not any(isinstance(i, ev.Availability) for i in got)  # none of these takes the fallback down
        finally:
            await link.close()
            await runner.cleanup()

    run(body())


def test_a_refused_key_takes_the_fallback_down() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": "invalid_api_key", "message": "Incorrect API key provided"}},
                                 status=401)

    async def body() -> None:
        runner, url = await serve(handler)
        got: list[ev.Input] = []
        link = link_for(url, got)
        try:
            ask(link)
            await until(lambda: any(isinstance(i, ev.Availability) for i in got))
            (down,) = [i for i in got if isinstance(i, ev.Availability)]
            assert (down.backend, down.up, down.reason) == ("chat", False, "fault")
            assert down.cause.startswith("HTTP 401 invalid_api_key")
        finally:
            await link.close()
            await runner.cleanup()

    run(body())
