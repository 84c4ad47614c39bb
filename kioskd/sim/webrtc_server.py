"""A local stand-in for OpenAI's Realtime API over WebRTC (GA): ``kioskd simulate --transport webrtc``.

Written from the reference (shared/reference/webrtc.md §1, §3.1; realtime.md for the events), never from kioskd's
client (``kioskd.core.realtime`` and the webrtc adapter are not imported). The protocol is the WebSocket
simulator's own session core (``realtime_session.Session``); this module is the WebRTC transport around it.

HTTP (aiohttp):

- ``POST /v1/realtime/calls`` (and Azure's ``/openai/v1/realtime/calls``): ``multipart/form-data`` with an ``sdp``
  part (the offer) and a ``session`` part (JSON, ``"type": "realtime"``, ``model``, and any other GA session
  field, applied as a ``session.update`` would be). Auth: ``Authorization: Bearer <key>`` or ``api-key: <key>``
  when ``SimOptions.api_key`` is set. A raw ``application/sdp`` body is taken only with an ``ek_…`` bearer token
  (any: the simulator mints none), with the default session; with a standard key it is a 400, as the real service
  reserves that mode for ephemeral tokens (webrtc.md §1.1). Answer: **201**, the SDP answer as ``application/sdp``,
  ``Location: /v1/realtime/calls/rtc_…``. Errors: JSON ``{"error": {message, type, code, param}}``.
- ``POST …/calls/{call_id}/hangup``: 200, the call closed.
- ``GET /v1/models/{model}``: as the WebSocket simulator.

The call: one aiortc peer (``iceServers=[]``; kioskd's ``rtc_internals.install()``, and ``allow_loopback()`` when
listening on a loopback host). Events travel as JSON on the client's ``oai-events`` data channel (another label is
closed at once); ``session.created`` is sent when it opens. The client's Opus track is decoded and resampled
(stateful ``av.AudioResampler``) to 24 kHz mono PCM16 and appended to the input buffer as it arrives;
``input_audio_buffer.append`` over the channel is taken too (PCM16 24 kHz: the session's input format is not used,
as WebRTC negotiates audio in the SDP). Reply audio is generated on the SimOptions schedule (ahead of real time
at ``speedup``) into a paced outgoing track that plays 20 ms frames at real time (silence when it has nothing):

- ``output_audio_buffer.started`` when a response's first audio is written (after ``content_part.added``);
- ``output_audio_buffer.stopped`` when the track has played that response's last sample (after ``response.done``:
  generation runs ahead of playout);
- ``response.cancel`` stops generation, but what is already in the track keeps playing until the client's
  ``output_audio_buffer.clear``, which empties the track and answers ``output_audio_buffer.cleared`` (the
  cleared response gets no ``stopped``);
- no ``response.output_audio.delta`` on the channel; transcript deltas, items, ``response.done`` and the rest are
  as over WebSocket. ``conversation.item.truncate`` is checked against the audio generated for the item.

Faults: ``refuse_429`` (the next POST answers 429), ``drop_mid_reply`` (the peer connection is closed after two
chunks of the next reply), ``error_mid_reply``, and the option fault ``bad_frames``; the session lifetime ends
with ``session_expired`` and the peer connection closed. Not here: the sideband ``?call_id=`` WebSocket, client
secrets, voice activity detection.

Records: everything ``RealtimeRecords`` holds, plus ``calls`` (one ``RtcCall`` per answered POST), ``hangups``
and ``output_clears``. All on the event loop that called ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from aiohttp import web

from kioskd.adapters import rtc_internals
from kioskd.config import is_loopback
from kioskd.core.pcm import API_RATE_HZ, Pcm, ms_to_samples, samples_to_ms
from kioskd.sim.common import Json, serve_until_cancelled
from kioskd.sim.realtime_session import (
    DEFAULT_MODEL,
    ClientError,
    RealtimeRecords,
    Response,
    Session,
    SessionGone,
    SimOptions,
)
from kioskd.sim.web import port_of, serve_app

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection
    from aiortc.mediastreams import MediaStreamTrack

CALLS_PATHS: Final = ("/v1/realtime/calls", "/openai/v1/realtime/calls")
EVENTS_LABEL: Final = "oai-events"
#: one outgoing audio frame: 20 ms at 24 kHz (aiortc's Opus encoder resamples it to 48 kHz stereo)
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = ms_to_samples(FRAME_MS)
#: one-shot faults armed with ``arm_fault``: "refuse_429" answers the next POST with 429; "drop_mid_reply"
#: closes the peer connection after two chunks of the next reply; "error_mid_reply" sends a server_error
#: ``error`` event inside the next reply
ONE_SHOT_FAULTS: Final[frozenset[str]] = frozenset({"drop_mid_reply", "refuse_429", "error_mid_reply"})


@dataclass
class RtcCall:
    """One answered ``POST /calls``: what a test may want to know about it."""

    id: str
    path: str
    model: str
    session_id: str
    labels: list[str] = field(default_factory=list)  # data channel labels the client opened, in order
    heard_samples: int = 0  # mic audio decoded from the client's track so far (24 kHz samples)
    written_samples: int = 0  # reply audio written into the outgoing track
    played_samples: int = 0  # reply audio the track has played out (cleared audio is never played)
    hung_up: bool = False  # by ``POST …/hangup``
    closed: bool = False  # the peer connection is closed (hang-up, fault, expiry, the client, or close())


def _error(status: int, code: str | None, message: str, param: str | None = None,
           kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": param}},
                             status=status)


class RtcSimulator(RealtimeRecords):
    """The simulated WebRTC server. ``start()`` listens; each answered POST is one call (one session)."""

    def __init__(self, options: SimOptions = SimOptions()) -> None:
        super().__init__(options, ONE_SHOT_FAULTS)
        self.calls: list[RtcCall] = []
        #: call ids hung up by ``POST …/hangup``, in order
        self.hangups: list[str] = []
        #: (response_id, ms of queued audio dropped) for each ``output_audio_buffer.clear``, in order
        self.output_clears: list[tuple[str, int]] = []
        self._sessions: dict[str, _RtcSession] = {}
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Synthesise the reply, then listen. ``port`` 0 picks a free port (read it back from ``port``)."""
        problem = rtc_internals.missing()
        if problem is not None:
            raise RuntimeError(problem)
        await self.synthesise()
        rtc_internals.install()
        if is_loopback(host):
            rtc_internals.allow_loopback()
        app = web.Application()
        for path in CALLS_PATHS:
            app.router.add_post(path, self._call)
            app.router.add_post(path + "/{call_id}/hangup", self._hangup)
        app.router.add_get("/v1/models/{model}", self._model)
        self._host = host
        self._runner = await serve_app(app, host, port)

    @property
    def port(self) -> int:
        return port_of(self._runner)

    @property
    def url(self) -> str:
        """The Realtime URL as kioskd's config holds it; the webrtc client derives ``http://…/v1/realtime/calls``."""
        return f"ws://{self._host}:{self.port}/v1/realtime?model={DEFAULT_MODEL}"

    @property
    def calls_url(self) -> str:
        return f"http://{self._host}:{self.port}{CALLS_PATHS[0]}"

    async def close(self) -> None:
        """Close every call, then stop listening."""
        for session in list(self._sessions.values()):
            await session.hang_up()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def session_of(self, call_id: str) -> _RtcSession | None:
        return self._sessions.get(call_id)

    # ------------------------------------------------------------------------------------------- HTTP

    async def _model(self, request: web.Request) -> web.Response:
        status, body = self.model_answer(request.match_info["model"], _headers(request))
        return web.json_response(body, status=status)

    async def _hangup(self, request: web.Request) -> web.Response:
        headers = _headers(request)
        self.request_headers.append(headers)
        if not (self.authorized(headers) or _bearer(headers).startswith("ek_")):
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        call_id = request.match_info["call_id"]
        session = self._sessions.get(call_id)
        if session is None:
            return _error(404, "call_not_found", f"Call with id '{call_id}' not found.", "call_id")
        self.hangups.append(call_id)
        session.record.hung_up = True
        await session.hang_up()
        return web.Response(status=200)

    async def _call(self, request: web.Request) -> web.Response:
        """``POST /calls``: check, answer the offer, and start the call's session."""
        headers = _headers(request)
        self.request_headers.append(headers)
        ephemeral = _bearer(headers).startswith("ek_")
        if not (ephemeral or self.authorized(headers)):
            return _error(401, "invalid_api_key", "Incorrect API key provided.")
        if self.take_fault("refuse_429"):
            return _error(429, "rate_limit_exceeded", "Rate limit reached for requests.", kind="requests")
        if request.content_type == "multipart/form-data":
            form = await request.post()
            sdp, session_part = _text(form.get("sdp")), _text(form.get("session"))
            if sdp is None:
                return _error(400, "missing_required_parameter", "Missing required parameter: 'sdp'.", "sdp")
            if session_part is None:
                return _error(400, "missing_required_parameter", "Missing required parameter: 'session'.",
                              "session")
            try:
                config = json.loads(session_part)
            except ValueError:
                return _error(400, "invalid_json", "The 'session' part is not valid JSON.", "session")
        elif request.content_type == "application/sdp":
            if not ephemeral:
                return _error(400, "invalid_request_error",
                              "A raw application/sdp body needs an ephemeral client secret (ek_…); with an API key, "
                              "send multipart/form-data with 'sdp' and 'session' parts.")
            sdp, config = await request.text(), {"type": "realtime", "model": DEFAULT_MODEL}
        else:
            return _error(400, "unsupported_content_type",
                          f"Unsupported content type '{request.content_type}': use multipart/form-data "
                          "(or application/sdp with an ephemeral key).")
        if not isinstance(config, dict) or config.get("type") != "realtime":
            return _error(400, "invalid_value", "Invalid 'session': expected an object with \"type\": \"realtime\".",
                          "session.type")
        model = config.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "missing_required_parameter", "Missing required parameter: 'session.model'.",
                          "session.model")
        call = RtcCall(id=self.new_id("rtc"), path=request.path, model=model, session_id="")
        session = _RtcSession(self, call)
        call.session_id = session.session["id"]
        try:
            session.configure(config)
        except ClientError as exc:
            return _error(400, exc.code, exc.message, exc.param)
        self._sessions[call.id] = session  # before the peer exists: close() reaches a call being answered
        try:
            answer = await session.answer(sdp)
        except ValueError as exc:
            await session.hang_up()  # forgets it
            return _error(400, "invalid_offer", f"Invalid SDP offer: {exc}", "sdp")
        self.calls.append(call)
        self.connections += 1
        return web.Response(status=201, body=answer.encode(), content_type="application/sdp",
                            headers={"Location": f"{CALLS_PATHS[0]}/{call.id}"})

    def _forget(self, call_id: str) -> None:
        self._sessions.pop(call_id, None)


def make_output_track(call: RtcCall) -> Any:
    """The call's outgoing audio track: a queue of 24 kHz PCM16 played out in 20 ms frames at real time (silence
    when empty), as the service paces its reply from a buffer on its side."""
    return _output_track_class()(call)


@functools.cache
def _output_track_class() -> type[Any]:
    """The track class, built on first use so that this module imports without the webrtc extra."""
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: PLC0415
    from av import AudioFrame  # noqa: PLC0415

    class _Track(MediaStreamTrack):  # type: ignore[misc]
        kind = "audio"

        def __init__(self, call: RtcCall) -> None:
            super().__init__()
            self.call = call
            self.queued: Pcm = np.zeros(0, dtype=np.int16)
            self.written = 0  # samples ever written (cleared ones included)
            self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
            self._start: float | None = None
            self._pts = 0

        @property
        def played(self) -> int:
            return self.written - self.queued.size

        def write(self, pcm: Pcm) -> int:
            """Queue ``pcm``; returns the position its last sample will have played at."""
            self.queued = np.concatenate([self.queued, pcm.astype(np.int16)])
            self.written += pcm.size
            self.call.written_samples += pcm.size
            return self.written

        def clear(self) -> int:
            """Drop what is queued (returns how many samples); every waiter learns it will not be played."""
            dropped = self.queued.size
            self.queued = np.zeros(0, dtype=np.int16)
            for _, waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(False)
            self._waiters.clear()
            return dropped

        async def played_to(self, position: int) -> bool:
            """True once the track has played up to ``position``; False if it was cleared first (or stopped)."""
            if self.played >= position:
                return True
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.append((position, waiter))
            return await waiter

        def stop(self) -> None:
            self.clear()
            super().stop()

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            loop = asyncio.get_running_loop()
            if self._start is None:
                self._start = loop.time()
            else:
                self._pts += FRAME_SAMPLES
                await asyncio.sleep(max(self._start + self._pts / API_RATE_HZ - loop.time(), 0))
            if self.readyState != "live":
                raise MediaStreamError
            out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            take = min(FRAME_SAMPLES, self.queued.size)
            if take:
                out[:take] = self.queued[:take]
                self.queued = self.queued[take:]
                self.call.played_samples += take
                played, still = self.played, []
                for position, waiter in self._waiters:
                    if position <= played:
                        if not waiter.done():
                            waiter.set_result(True)
                    else:
                        still.append((position, waiter))
                self._waiters = still
            frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = API_RATE_HZ
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, API_RATE_HZ)
            return frame

    return _Track


class _RtcSession(Session):
    """One call: the peer connection, its ``oai-events`` channel, the mic track in, the paced track out."""

    def __init__(self, sim: RtcSimulator, call: RtcCall) -> None:
        super().__init__(sim, call.model)
        self.rtc_sim, self.record = sim, call
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.track = make_output_track(call)
        self.inbox: asyncio.Queue[tuple[str, str | bytes]] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.ends: dict[str, int] = {}  # response id -> track position of its last sample written
        self.playing: str | None = None  # the response whose audio was written last
        self.closing: asyncio.Task[None] | None = None
        self.runner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------- the peer

    async def answer(self, offer_sdp: str) -> str:
        """Build the peer, take the offer, return the SDP answer (raises ValueError for a bad offer)."""
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: PLC0415

        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("datachannel", self.on_channel)
        pc.on("track", self.on_track)
        pc.on("connectionstatechange", self.on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, InvalidStateError, … for a bad offer
            raise ValueError(str(exc) or type(exc).__name__) from exc
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise ValueError("the offer has no audio m-line")
        pc.addTrack(self.track)
        await pc.setLocalDescription(await pc.createAnswer())
        self.runner = asyncio.create_task(self.run())
        return str(pc.localDescription.sdp)

    def on_channel(self, channel: RTCDataChannel) -> None:
        self.record.labels.append(channel.label)
        if channel.label != EVENTS_LABEL or self.channel is not None:
            channel.close()
            return
        self.channel = channel
        channel.on("message", lambda message: self.inbox.put_nowait(("message", message)))
        channel.on("close", lambda: self.inbox.put_nowait(("close", "")))
        self.inbox.put_nowait(("open", ""))  # aiortc announces a remote channel already open

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.spawn(self.hear(track))

    def on_state(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("failed", "closed"):
            self.inbox.put_nowait(("close", ""))

    async def hear(self, track: MediaStreamTrack) -> None:
        """The client's mic: decoded 48 kHz frames, resampled to 24 kHz mono PCM16, into the input buffer."""
        from aiortc.mediastreams import MediaStreamError  # noqa: PLC0415
        from av import AudioFrame, AudioResampler  # noqa: PLC0415

        resampler = AudioResampler(format="s16", layout="mono", rate=API_RATE_HZ)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1).astype(np.int16)
                self.buffer.append(pcm)
                self.record.heard_samples += pcm.size

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """The channel's events, one at a time in order (as the WebSocket session reads its frames)."""
        try:
            while True:
                kind, message = await self.inbox.get()
                if kind == "close":
                    break
                if kind == "open":
                    await self.open()
                else:
                    await self.dispatch(message)
        except SessionGone:
            pass
        finally:
            await self.finish()
            for task in list(self.tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SessionGone):
                    await task
            await self.close_pc()

    async def close_pc(self) -> None:
        self.inbox.put_nowait(("close", ""))  # the session ends (pc.close() silences the peer's own events)
        self.track.stop()
        if self.pc is not None:
            await self.pc.close()
        self.record.closed = True
        self.rtc_sim._forget(self.record.id)

    async def hang_up(self) -> None:
        """Close the call (hang-up, the simulator closing) and wait until its session has ended."""
        self.inbox.put_nowait(("close", ""))
        if self.runner is not None and self.runner is not asyncio.current_task():
            await self.runner
        else:
            await self.close_pc()

    # ------------------------------------------------------------------------------------------- transport hooks

    async def transmit(self, text: str) -> None:
        if self.channel is None or self.channel.readyState != "open":
            raise SessionGone
        self.channel.send(text)

    async def emit_audio(self, r: Response, ids: Json, chunk: Pcm) -> None:
        self.ends[r.id] = self.track.write(chunk)
        self.playing = r.id
        if r.sent_samples == 0:
            await self.send("output_audio_buffer.started", response_id=r.id)

    async def after_response(self, r: Response) -> None:
        end = self.ends.pop(r.id, None)
        if end is not None:
            self.spawn(self.stopped_when_played(r.id, end))

    async def stopped_when_played(self, response_id: str, end: int) -> None:
        if await self.track.played_to(end):
            with contextlib.suppress(SessionGone):
                await self.send("output_audio_buffer.stopped", response_id=response_id)

    async def output_clear(self, event: Json, event_id: str | None) -> None:
        dropped = self.track.clear()
        response_id = self.playing or (self.active.id if self.active else "")
        self.rtc_sim.output_clears.append((response_id, samples_to_ms(dropped)))
        await self.send("output_audio_buffer.cleared", response_id=response_id)

    @property
    def input_format(self) -> str:
        return "audio/pcm"  # the track's audio, decoded; appends over the channel are taken as PCM16 24 kHz

    async def drop(self) -> None:
        self.closing = asyncio.ensure_future(self.close_pc())  # not awaited here: closing ends this reply's task

    async def end(self) -> None:
        await self.close_pc()


def _headers(request: web.Request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def _bearer(headers: dict[str, str]) -> str:
    value = headers.get("authorization", "")
    return value[len("Bearer "):] if value.startswith("Bearer ") else ""


def _text(value: Any) -> str | None:
    """A multipart field as text: aiohttp gives a str, a bytearray (a part with a content type), or a file."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, web.FileField):
        return bytes(value.file.read()).decode("utf-8", errors="replace")
    return str(value)


async def serve(options: SimOptions, host: str, port: int) -> None:
    """Run until cancelled; print one line `kioskd simulate: listening on ws://HOST:PORT/v1/realtime` (flush): the
    Realtime URL kioskd's config takes; its webrtc client POSTs to ``http://HOST:PORT/v1/realtime/calls``."""
    sim = RtcSimulator(options)
    await serve_until_cancelled(sim, host, port, lambda: f"ws://{host}:{sim.port}/v1/realtime")
