"""A local stand-in for OpenAI's Realtime API (GA protocol) on a real WebSocket: ``kioskd simulate``.

Written from the protocol reference (shared/reference/realtime.md §1-11), never from kioskd's client codec
(``kioskd.core.realtime`` is not imported), so one typo cannot pass on both sides.

The protocol itself is ``realtime_session.Session``, shared with the WebRTC simulator (``webrtc_server.py``); this
module is the WebSocket transport around it: the handshake (path, auth header, the retired ``OpenAI-Beta`` header),
one frame per event, reply audio as ``response.output_audio.delta`` events on the SimOptions schedule,
``output_audio_buffer.clear`` refused (WebRTC and SIP only), the session lifetime ending in close 1001.

What the session does: ``session.created`` / ``session.update`` with the GA rules, the input audio buffer (append,
clear, commit with the 100 ms minimum) in PCM16 at 24 kHz or G.711 µ-law (``audio/pcmu``, 8 kHz: decoded with
``core/g711.ulaw_decode``, which the tests check against the G.711 table, and recorded at 24 kHz),
one response at a time streamed as audio and transcript deltas on a configurable schedule (first-delta delay,
speed-up, seeded jitter and spikes), ``response.cancel``, ``conversation.item.truncate`` checked against the
audio sent, ``invalid_event`` for garbage, and the session lifetime (``session_expired``, close 1001).
Function calls: with ``SimOptions.tool_call`` naming a tool the session declares, a new question is answered
with a call (after an optional spoken preamble), and the answer follows the ``function_call_output``.
What it does not: voice activity detection (``server_vad`` is reported as the default, but nothing is detected),
text output, transcription.

Everything a test inspects is appended to public lists on ``RealtimeSimulator`` (``RealtimeRecords``), across all
connections. All of it runs on the event loop that called ``start()``; read the records from that loop, or after
``close()``.
"""

from __future__ import annotations

import asyncio
import http
import json
import urllib.parse
from typing import Final

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kioskd.core.pcm import Pcm, pcm_to_b64
from kioskd.sim.common import Json, serve_until_cancelled
from kioskd.sim.realtime_session import (
    DEFAULT_MODEL,
    KNOWN_FAULTS,
    RealtimeRecords,
    Session,
    SessionGone,
    SimOptions,
    error_body,
)
from kioskd.sim.realtime_session import Response as SimResponse

__all__ = ["DEFAULT_MODEL", "KNOWN_FAULTS", "ONE_SHOT_FAULTS", "RealtimeSimulator", "SimOptions", "serve"]

PATHS: Final = ("/v1/realtime", "/openai/v1/realtime")
MODELS_PATH: Final = "/v1/models/"
#: frames up to 16 MiB: one append may carry up to 15 MiB (reference §10)
MAX_FRAME_BYTES: Final = 16 * 2**20
#: one-shot faults armed at run time with ``arm_fault``: "drop_mid_reply" cuts the TCP connection (no close
#: frame: the client sees 1006) after two audio deltas of the next reply; "refuse_429" answers the next
#: handshake with HTTP 429; "error_mid_reply" sends a server_error `error` event inside the next reply;
#: "silent_mid_reply" goes quiet after two audio deltas of the next reply without closing anything: it stops
#: reading the socket (so pings get no pong) and sending, as a peer behind a dead Wi-Fi link would
ONE_SHOT_FAULTS: Final[frozenset[str]] = frozenset({"drop_mid_reply", "refuse_429", "error_mid_reply",
                                                    "silent_mid_reply"})


class RealtimeSimulator(RealtimeRecords):
    """The simulated server. ``start()`` listens; each connection is one session with its own conversation."""

    def __init__(self, options: SimOptions = SimOptions()) -> None:
        super().__init__(options, ONE_SHOT_FAULTS)
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._silenced: list[asyncio.Transport] = []  # connections gone quiet by "silent_mid_reply"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Synthesise the reply, then listen. ``port`` 0 picks a free port (read it back from ``port``)."""
        await self.synthesise()
        self._host = host
        self._server = await ws_serve(self._handle, host, port, process_request=self._process_request,
                                      max_size=MAX_FRAME_BYTES)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}/v1/realtime?model={DEFAULT_MODEL}"

    async def close(self) -> None:
        """Stop listening and close every session (close code 1001, as a server going away)."""
        for transport in self._silenced:  # they read nothing, so they would wait out every closing handshake
            transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the upgrade: the path, then the key. Rejections are plain HTTP answers without the key."""
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        self.request_headers.append(headers)
        path = urllib.parse.urlsplit(request.path).path
        if path.startswith(MODELS_PATH):
            status, body = self.model_answer(path[len(MODELS_PATH):], headers)
            return _json_response(http.HTTPStatus(status), body)
        if path not in PATHS:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not found: use /v1/realtime\n")
        if not self.authorized(headers):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        if self.take_fault("refuse_429"):
            return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS, "Rate limit reached.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        await _WsSession(self, ws).run()


class _WsSession(Session):
    """One WebSocket connection: a text frame per event, reply audio as delta events."""

    def __init__(self, sim: RealtimeSimulator, ws: ServerConnection) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path if ws.request else "").query)
        super().__init__(sim, query.get("model", [DEFAULT_MODEL])[0])
        self.ws, self.ws_sim = ws, sim

    async def transmit(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise SessionGone from exc

    async def emit_audio(self, r: SimResponse, ids: Json, chunk: Pcm) -> None:
        await self.send("response.output_audio.delta", **ids, delta=pcm_to_b64(chunk))

    async def drop(self) -> None:
        self.ws.transport.abort()  # a dead link: no close frame, the client sees 1006

    async def go_silent(self) -> None:
        self.ws.transport.pause_reading()  # no pong, no close, no reset: only keepalive notices
        self.ws_sim._silenced.append(self.ws.transport)

    async def end(self) -> None:
        await self.ws.close(1001, "invalid_request_error.session_expired")

    async def run(self) -> None:
        try:
            if self.ws.request is not None and "openai-beta" in self.ws.request.headers:
                await self.send("error", error=error_body(
                    "beta_api_shape_disabled",
                    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.", None))
                await self.ws.close(4000, "invalid_request_error.beta_api_shape_disabled")
                return
            await self.open()
            async for message in self.ws:
                await self.dispatch(message)
        except (ConnectionClosed, SessionGone):
            pass
        finally:
            await self.finish()


def _json_response(status: http.HTTPStatus, body: Json) -> Response:
    data = json.dumps(body).encode()
    return Response(status.value, status.phrase, Headers([("Content-Type", "application/json"),
                                                          ("Content-Length", str(len(data)))]), data)


async def serve(options: SimOptions, host: str, port: int) -> None:
    """Run until cancelled; print one line `kioskd simulate: listening on ws://HOST:PORT/v1/realtime` (flush)."""
    sim = RealtimeSimulator(options)
    await serve_until_cancelled(sim, host, port, lambda: f"ws://{host}:{sim.port}/v1/realtime")
