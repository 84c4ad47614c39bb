"""One Realtime session over WebRTC (``realtime.transport: webrtc``): the same link object as ``RealtimeLink``.

The call is made the unified way (reference webrtc.md §1.1): one ``POST …/realtime/calls`` with the standard key,
a multipart body of the SDP offer and the session (``type``, ``model``); 201 brings the SDP answer and, in
``Location``, the call's id (hung up on close). The GA events travel on the ``oai-events`` data channel, parsed by
the WebSocket codec; the question goes up on an Opus track, the reply comes down on the remote track.

- **The microphone track** (``MicTrack``) carries audio only while the visitor holds the button: the pre-roll and
  the appends, cut in 20 ms frames. Nothing is sent between questions (``recv`` waits), so the uplink is idle
  on the museum's Wi-Fi. At ``Commit`` the track sends ``TAIL_MS`` of silence after the last word, which pushes
  the word's last packets through the server's jitter buffer (§1.4: a receiver holds a few packets), and the
  ``input_audio_buffer.commit`` waits on the data channel until the track has handed the tail to the encoder:
  events and audio are two streams the server cannot order, so kioskd orders them here.
- **The reply** is read from the remote track, resampled from 48 kHz stereo to 24 kHz mono and posted as the
  ``AudioDelta`` of the reply playing (``core/rtc.RtcDownlink``), into kioskd's own playout buffer; aiortc's
  jitter buffer is replaced by one that never grows (``rtc_internals``), so it does not set the latency.
- **Barge-in** is the core's: ``response.cancel`` + ``output_audio_buffer.clear`` + ``conversation.item.truncate``
  at the heard position; the cancelled reply's audio still arriving is dropped here.
- It ends in exactly one ``Disconnected`` — the call refused, the peer connection failed or closed, the data
  channel closed, a data-channel message over the WebSocket's frame limit, the question's tail not taken by
  the encoder within ``FLUSH_TIMEOUT_S``, or the channel's send buffer past ``MAX_BUFFERED_BYTES`` (a stalled
  link) — unless kioskd closed it first.

UDP only: aioice has no ICE-TCP (§1.3), so a network that blocks UDP needs the websocket transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from kioskd.adapters import realtime_ws, rtc_internals
from kioskd.adapters.link import LinkOptions
from kioskd.config import is_loopback
from kioskd.core import events as ev
from kioskd.core.pcm import API_RATE_HZ, Pcm, ms_to_samples
from kioskd.core.realtime import parse_server_event
from kioskd.core.rtc import RtcDownlink, RtcEncoder
from kioskd.errors import AuthError, ConnectionLost, HandshakeError

FRAME_SAMPLES: Final = ms_to_samples(20)  # one Opus frame at 24 kHz
#: silence sent after the last word before the commit goes out (reference §1.4 suggests 150-300 ms of audio
#: still flowing; kioskd sends it at once rather than in real time, so the commit waits only for the encoder)
TAIL_MS: Final = 100
#: frames the microphone track may hold (10 s): more means the encoder has stopped taking them
MIC_QUEUE_FRAMES: Final = 500
#: the data channel's send buffer past this means the network stalled (about 10 s of events)
MAX_BUFFERED_BYTES: Final = 1 << 20
#: the SDP answer and an error body are small; a larger answer is no answer
MAX_ANSWER_BYTES: Final = 64 * 1024
#: the track hands the question's tail to the encoder at once (it is not paced); not within this, it never will
FLUSH_TIMEOUT_S: Final = 2.0
TICK_S: Final = 0.02
HANGUP_TIMEOUT_S: Final = 2.0


def calls_url(url: str) -> str:
    """The calls endpoint of a Realtime URL: ws→http, wss→https, ``…/realtime`` + ``/calls``, no query."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/calls", "", ""))


class MicTrack:
    """The question as an audio track: 20 ms frames while held, then the tail, then nothing until the next."""

    kind = "audio"

    def __init__(self) -> None:
        from aiortc.mediastreams import MediaStreamTrack  # noqa: PLC0415  (the optional extra)

        class _Track(MediaStreamTrack):  # type: ignore[misc]
            kind = "audio"

            async def recv(inner) -> Any:  # noqa: N805
                return await self._next()

        self.track = _Track()
        self._queue: asyncio.Queue[tuple[Pcm, asyncio.Event | None]] = asyncio.Queue(MIC_QUEUE_FRAMES)
        self._rest = np.zeros(0, dtype=np.int16)
        self._pts = 0

    def start(self) -> None:
        self._rest = np.zeros(0, dtype=np.int16)

    def append(self, pcm: Pcm) -> bool:
        """Queue the audio in whole frames; False if the track is backed up (the frames are dropped)."""
        pcm = np.concatenate([self._rest, pcm]) if self._rest.size else pcm
        whole = pcm.size - pcm.size % FRAME_SAMPLES
        self._rest = pcm[whole:].copy()
        ok = True
        for i in range(0, whole, FRAME_SAMPLES):
            ok = self._put(pcm[i:i + FRAME_SAMPLES], None) and ok
        return ok

    def finish(self) -> asyncio.Event:
        """The question's last partial frame padded, then the tail; the event is set when the track has handed the
        tail's last frame to the encoder."""
        last = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        last[:self._rest.size] = self._rest
        self._rest = np.zeros(0, dtype=np.int16)
        sent = asyncio.Event()
        frames = [last] + [np.zeros(FRAME_SAMPLES, dtype=np.int16)] * max(1, TAIL_MS // 20)
        for i, frame in enumerate(frames):
            if not self._put(frame, sent if i == len(frames) - 1 else None):
                sent.set()  # backed up: do not hold the commit for a frame that will never go
        return sent

    def _put(self, pcm: Pcm, marker: asyncio.Event | None) -> bool:
        try:
            self._queue.put_nowait((pcm, marker))
            return True
        except asyncio.QueueFull:
            return False

    async def _next(self) -> Any:
        import av  # noqa: PLC0415

        pcm, marker = await self._queue.get()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = API_RATE_HZ
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, API_RATE_HZ)
        self._pts += pcm.size
        if marker is not None:
            asyncio.get_running_loop().call_soon(marker.set)  # after the sender has taken this frame
        return frame


@dataclasses.dataclass(frozen=True)
class _Flush:
    """In the outbox: wait until the microphone track has sent the question's tail."""

    sent: asyncio.Event


class RtcLink:
    """One session over WebRTC. ``start()`` opens it in the background; ``send(intent)`` never waits;
    ``close()`` hangs up and ends it."""

    def __init__(self, options: LinkOptions, post: Callable[[ev.Input], None], model: str) -> None:
        self._options = options
        self._post = post
        self._model = model
        self._encoder = RtcEncoder()
        self._downlink = RtcDownlink()
        self._outbox: asyncio.Queue[str | _Flush] = asyncio.Queue()
        self._mic: MicTrack | None = None
        self._pc: Any = None
        self._channel: Any = None
        self._call: str | None = None  # the Location of the call, for the hangup
        self._answered = False  # the service answered the offer (201)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ended = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-rtc-link")

    def send(self, intent: ev.Intent) -> None:
        if self._closing or self._ended:
            return
        mic = self._mic
        match intent:
            case ev.StartQuestion() if mic is not None:
                mic.start()
            case ev.AppendAudio(pcm) if mic is not None:
                mic.append(pcm)
            case ev.Commit() if mic is not None:
                self._outbox.put_nowait(_Flush(mic.finish()))
            case ev.CancelReply(response_id):
                for inp in self._downlink.cancel(response_id):
                    self._deliver(inp)
        for event in self._encoder.encode(intent):
            self._outbox.put_nowait(json.dumps(event))

    async def close(self) -> None:
        """Hang up the call and close the peer connection; nothing is reported after this."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _end(self, cause: BaseException) -> bool:
        if self._closing or self._ended:
            return False
        self._ended = True
        self._post(ev.Disconnected(cause))
        return True

    def _fail(self, cause: BaseException) -> None:
        """An aiortc callback saw the session end: report it and stop the session (hang up, close the peer)."""
        if self._end(cause) and self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _deliver(self, inp: ev.Input) -> None:
        if not (self._closing or self._ended):
            self._post(inp)

    # ---------------------------------------------------------------------------------------------- session

    async def _run(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection  # noqa: PLC0415

        o = self._options
        rtc_internals.install()
        if is_loopback(urlsplit(o.url).hostname or ""):
            rtc_internals.allow_loopback()
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            async with httpx.AsyncClient(follow_redirects=False) as http:
                try:  # the call exists from its 201 on: hung up even if ICE never connects or kioskd closes first
                    try:
                        async with asyncio.timeout(o.connect_timeout_s):
                            remote = await self._connect(pc, http)
                    except TimeoutError:
                        endpoint = realtime_ws.endpoint_of(calls_url(o.url))
                        if not self._answered:
                            raise TimeoutError(f"{endpoint}: no answer to the call within "
                                               f"{o.connect_timeout_s:g} s") from None
                        raise TimeoutError(f"{endpoint}: the call was answered but no UDP path opened within "
                                           f"{o.connect_timeout_s:g} s (UDP blocked? realtime.transport: websocket "
                                           "needs only TCP)") from None
                    self._deliver(ev.Connected())
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._write(), name="rtc-writer")
                        group.create_task(self._tick(), name="rtc-tick")
                        await self._read_audio(remote)
                except* Exception as failed:  # reported before the hangup, whose echo (the channel closed) is no cause
                    self._end(failed.exceptions[0])
                finally:
                    await self._hangup(http)
        except* Exception as failed:
            self._end(failed.exceptions[0])
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(pc.close())

    async def _connect(self, pc: Any, http: httpx.AsyncClient) -> Any:
        """Offer, post, answer; returns the remote audio track once the data channel is open."""
        from aiortc import RTCSessionDescription  # noqa: PLC0415

        self._mic = MicTrack()
        channel = self._channel = pc.createDataChannel("oai-events")
        pc.addTrack(self._mic.track)
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        remote: asyncio.Future[Any] = loop.create_future()
        def on_open() -> None:
            if not opened.done():
                opened.set_result(None)

        def on_track(track: Any) -> None:
            if track.kind == "audio" and not remote.done():
                remote.set_result(track)

        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                if rtc_internals.oversized(pc):
                    self._fail(_oversized())
                elif opened.done():
                    self._fail(ConnectionLost(None, f"the WebRTC connection {pc.connectionState}: the server hung "
                                                    "up or stopped answering (ICE consent checks)"))
                else:
                    self._fail(ConnectionLost(None, f"the call was answered but the WebRTC connection "
                                                    f"{pc.connectionState} before it opened (UDP blocked? "
                                                    "realtime.transport: websocket needs only TCP)"))

        channel.on("open", on_open)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._fail(ConnectionLost(None, "the data channel closed: the server hung up")))
        pc.on("track", on_track)
        pc.on("connectionstatechange", on_state)

        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._post_offer(http, pc.localDescription.sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc's words alone ("Media sections in answer do not match offer") name no one
            endpoint = realtime_ws.endpoint_of(calls_url(self._options.url))
            raise ConnectionLost(None, f"{endpoint}: unusable SDP answer: {exc or type(exc).__name__}") from None
        await opened
        return await remote

    async def _post_offer(self, http: httpx.AsyncClient, offer: str) -> str:
        o = self._options
        url = calls_url(o.url)
        endpoint = realtime_ws.endpoint_of(url)
        session = json.dumps({"type": "realtime", "model": self._model})
        try:
            async with http.stream("POST", url, headers=realtime_ws.auth_headers(o.url, o.auth, o.api_key),
                                   files={"sdp": (None, offer, "application/sdp"),
                                          "session": (None, session, "application/json")}) as response:
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ConnectionLost(None, f"{endpoint}: the answer is over {MAX_ANSWER_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{endpoint}: {exc or type(exc).__name__}") from None
        if response.status_code in (401, 403):
            raise AuthError(endpoint, response.status_code)
        if response.status_code != 201:  # an error is JSON, never an SDP: check before setRemoteDescription
            raise HandshakeError(endpoint, response.status_code)
        self._answered = True
        location = response.headers.get("location", "")
        if location.startswith("/"):
            parts = urlsplit(url)
            self._call = urlunsplit((parts.scheme, parts.netloc, location.rstrip("/") + "/hangup", "", ""))
        return body.decode("utf-8", "replace")

    async def _hangup(self, http: httpx.AsyncClient) -> None:
        """Tell the service the call is over (it would otherwise bill a session nobody speaks to)."""
        if self._call is None:
            return
        o = self._options
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(HANGUP_TIMEOUT_S):  # as a whole: httpx's timeout is per read, and owned here
                await http.post(self._call, headers=realtime_ws.auth_headers(o.url, o.auth, o.api_key))

    def _on_message(self, message: str | bytes) -> None:
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "replace"))
        if size > realtime_ws.MAX_FRAME_BYTES:  # aiortc reassembles a message of any size: bound it as a frame
            self._fail(ConnectionLost(None, f"the server sent a data-channel message over kioskd's "
                                            f"{realtime_ws.MAX_FRAME_BYTES // 1024} KiB limit"))
            return
        inp = parse_server_event(message)
        data: dict[str, Any] = {}
        if isinstance(message, str) and not isinstance(inp, ev.BadEvent):
            with contextlib.suppress(ValueError):
                data = json.loads(message)
        if isinstance(inp, ev.SessionCreated) and inp.expires_at_s is not None:
            inp = dataclasses.replace(inp, expires_in_s=inp.expires_at_s - time.time())
        for out in self._downlink.event(data, inp, time.monotonic()):
            self._deliver(out)

    async def _write(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Flush):
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await item.sent.wait()
                except TimeoutError:  # the sender stopped taking frames: the question never reached the server
                    raise ConnectionLost(None, f"the microphone track sent nothing for {FLUSH_TIMEOUT_S:g} s: "
                                               "the question's audio is stuck") from None
                continue
            if self._channel.bufferedAmount > MAX_BUFFERED_BYTES:
                raise ConnectionLost(None, f"data channel send buffer over {MAX_BUFFERED_BYTES >> 10} KiB: "
                                           "network stalled")
            self._channel.send(item)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for inp in self._downlink.due(time.monotonic()):
                self._deliver(inp)

    async def _read_audio(self, remote: Any) -> None:
        """The reply's audio, 20 ms at a time: 48 kHz stereo from the decoder → 24 kHz mono → the playing reply (a
        new resampler when the decoder's format changes: av's refuses a frame unlike its first)."""
        import av  # noqa: PLC0415
        from aiortc.mediastreams import MediaStreamError  # noqa: PLC0415

        resampler: Any = None
        shape: tuple[int, str, str] | None = None
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                raise (_oversized() if rtc_internals.oversized(self._pc)
                       else ConnectionLost(None, "the reply's audio track ended")) from None
            if (frame.sample_rate, frame.layout.name, frame.format.name) != shape:  # Opus 48 kHz stereo, PCMU 8 kHz
                shape = (frame.sample_rate, frame.layout.name, frame.format.name)  # mono: the server may switch
                resampler = av.AudioResampler(format="s16", layout="mono", rate=API_RATE_HZ)
            for out in resampler.resample(frame):
                pcm = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                for inp in self._downlink.frame(pcm, time.monotonic()):
                    self._deliver(inp)


def _oversized() -> ConnectionLost:
    return ConnectionLost(None, "the server sent a data-channel message over kioskd's "
                                f"{rtc_internals.REASSEMBLY_MAX_BYTES // 1024} KiB limit; "
                                "kioskd dropped the connection")
