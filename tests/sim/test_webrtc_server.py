"""The WebRTC simulator (kioskd/sim/webrtc_server.py) against a bare aiortc client written here, over loopback:
deliberately not kioskd's webrtc adapter, so the simulator is checked against the reference, not against the
client it will test. Every event either side sends is validated against openai's GA types (tests/realtime_schema).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiortc")

import aiohttp  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402
from av import AudioFrame, AudioResampler  # noqa: E402

from kioskd.adapters import rtc_internals  # noqa: E402
from kioskd.core.pcm import Pcm, pcm_to_b64, tone  # noqa: E402
from kioskd.sim.webrtc_server import RtcSimulator  # noqa: E402
from kioskd.sim.realtime_session import SimOptions  # noqa: E402
from tests.conftest import UNIT_S, run  # noqa: E402
from tests.realtime_schema import validate_client, validate_server  # noqa: E402

KEY = "test-key-not-real"
MIC_HZ = 440.0
REPLY_HZ = 880.0
RATE = 24000
FRAME = 480  # 20 ms at 24 kHz
LOUD_RMS = 1500.0  # a 20 ms frame of either tone (amplitude 0.3 ≈ 9800) is far above this; Opus silence is ~0
#: a short reply, generated fast: the whole of it plays out in well under a second
FAST: dict[str, Any] = {"voice": "tone", "tone_hz": REPLY_HZ, "first_delta_delay_ms": 10.0, "speedup": 50.0,
                        "reply_ms": 400}
PTT_SESSION: dict[str, Any] = {
    "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
    "instructions": "You are the voice of exhibit 12. Answer in two sentences.",
    "audio": {"input": {"noise_reduction": {"type": "far_field"}, "transcription": None, "turn_detection": None},
              "output": {"voice": "marin", "speed": 1.0}},
    "tools": [], "tool_choice": "auto", "max_output_tokens": 1024, "truncation": "auto"}


def setup_module() -> None:
    rtc_internals.install()
    rtc_internals.allow_loopback()


@contextlib.asynccontextmanager
async def rtc_simulator(**options: Any) -> AsyncIterator[RtcSimulator]:
    """A started simulator; on a clean exit every event it sent (read by a client or not) is validated."""
    async with RtcSimulator(SimOptions(**options)) as sim:
        yield sim
    ids = [e["event_id"] for e in sim.server_events]
    assert len(ids) == len(set(ids)), "server event_ids are not unique"
    for event in sim.server_events:
        validate_server(event)
    assert not any(e["type"] == "response.output_audio.delta" for e in sim.server_events), \
        "WebRTC carries the reply audio on the track, not as delta events"


class MicTrack(MediaStreamTrack):
    """The client's microphone: a tone of MIC_HZ (or silence) in 20 ms frames at 48 kHz, paced at real time."""

    kind = "audio"

    def __init__(self, hz: float | None = MIC_HZ) -> None:
        super().__init__()
        self.hz = hz
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += 960
            await asyncio.sleep(max(self._start + self._pts / 48000 - loop.time(), 0))
        if self.hz is None:
            pcm = np.zeros(960, dtype=np.int16)
        else:
            t = (self._pts + np.arange(960)) / 48000
            pcm = (0.3 * 32767 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._pts, fractions.Fraction(1, 48000)
        return frame


class RtcClient:
    """A scripted Realtime client over WebRTC: events on ``oai-events``, the reply heard on the remote track."""

    def __init__(self, mic_hz: float | None = MIC_HZ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("oai-events")
        self.pc.addTrack(MicTrack(mic_hz))
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[dict[str, Any]] = []
        self.frames: list[Pcm] = []  # the remote track, 20 ms frames at 24 kHz mono, in arrival order
        self.closed = asyncio.Event()
        self.channel.on("message", self._message)
        self.channel.on("close", self.closed.set)
        self._listener: asyncio.Task[None] | None = None
        self._n = 0

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._listener = asyncio.ensure_future(self._listen(track))

    def _message(self, message: str | bytes) -> None:
        event = validate_server_dict(message)
        self.events.put_nowait(event)

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        pending = np.zeros(0, dtype=np.int16)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            for out in resampler.resample(frame):
                pending = np.concatenate([pending, out.to_ndarray().reshape(-1)])
            while pending.size >= FRAME:
                self.frames.append(pending[:FRAME].copy())
                pending = pending[FRAME:]

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def send(self, type_: str, **fields: Any) -> str:
        """Send a valid GA client event (checked against openai's models first); returns its event_id."""
        self._n += 1
        event = {"type": type_, "event_id": f"evt_{self._n}", **fields}
        validate_client(event)
        self.channel.send(json.dumps(event))
        return str(event["event_id"])

    async def recv(self) -> dict[str, Any]:
        event = await asyncio.wait_for(self.events.get(), 10 * UNIT_S)
        self.received.append(event)
        return event

    async def until(self, type_: str) -> list[dict[str, Any]]:
        """Events up to and including the first of ``type_``."""
        got = []
        while True:
            got.append(await self.recv())
            if got[-1]["type"] == type_:
                return got

    async def expect(self, type_: str) -> dict[str, Any]:
        event = await self.recv()
        assert event["type"] == type_, event
        return event

    def loud_frames(self, since: int = 0) -> list[Pcm]:
        return [f for f in self.frames[since:] if rms(f) > LOUD_RMS]

    async def close(self) -> None:
        await self.pc.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener


def validate_server_dict(message: str | bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(message)
    validate_server(event)
    return event


def rms(pcm: Pcm) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0


def dominant_hz(pcm: Pcm) -> float:
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / RATE)[int(np.argmax(spectrum[1:])) + 1])


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (polling the loop) until ``condition()`` holds; fail after 10 units."""
    try:
        async with asyncio.timeout(10 * UNIT_S):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def multipart(sdp: str, session: dict[str, Any] | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("sdp", sdp, content_type="application/sdp")
    form.add_field("session", json.dumps(session or {"type": "realtime", "model": "gpt-realtime"}),
                   content_type="application/json")
    return form


async def post(url: str, data: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers or {}) as resp:
        return resp.status, dict(resp.headers), await resp.text()


@contextlib.asynccontextmanager
async def call(sim: RtcSimulator, headers: dict[str, str] | None = None, session: dict[str, Any] | None = None,
               mic_hz: float | None = MIC_HZ, path: str = "/v1/realtime/calls") -> AsyncIterator[RtcClient]:
    """A connected client that has read (and checked) session.created."""
    c = RtcClient(mic_hz)
    try:
        status, _, body = await post(f"http://127.0.0.1:{sim.port}{path}", multipart(await c.offer(), session),
                                     headers if headers is not None else {"Authorization": f"Bearer {KEY}"})
        assert status == 201, body
        await c.answer(body)
        await c.expect("session.created")
        yield c
    finally:
        await c.close()


def error_of(body: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    return error


async def ask(c: RtcClient, sim: RtcSimulator, ms: int = 300) -> None:
    """Push to talk: clear, let ``ms`` of the mic track arrive, commit."""
    await c.send("input_audio_buffer.clear")
    await c.expect("input_audio_buffer.cleared")
    heard = sim.calls[-1].heard_samples
    await eventually(lambda: sim.calls[-1].heard_samples >= heard + ms * RATE // 1000, "mic audio")
    await c.send("input_audio_buffer.commit")
    await c.expect("input_audio_buffer.committed")


# ------------------------------------------------------------------------------------------- HTTP


def test_a_multipart_call_is_answered_201_with_the_sdp_and_a_location() -> None:
    """POST /v1/realtime/calls (sdp + session parts, a standard key): 201, the SDP answer, the call id in
    Location; session.created comes over oai-events with the model of the session part."""

    async def body() -> None:
        async with rtc_simulator(api_key=KEY, **FAST) as sim:
            c = RtcClient()
            try:
                status, headers, answer = await post(
                    f"{sim.calls_url}", multipart(await c.offer(), {**PTT_SESSION, "model": "gpt-realtime-mini"}),
                    {"Authorization": f"Bearer {KEY}", "Accept": "application/sdp"})
                assert status == 201, answer
                assert headers["Content-Type"].startswith("application/sdp")
                assert answer.startswith("v=0") and "webrtc-datachannel" in answer and "opus/48000/2" in answer
                location = headers["Location"]
                assert re.fullmatch(r"/v1/realtime/calls/rtc_\w+", location), location
                assert location.rsplit("/", 1)[1] == sim.calls[0].id
                await c.answer(answer)
                created = await c.expect("session.created")
                assert created["session"]["model"] == "gpt-realtime-mini"
                # the session part was applied as a session.update would be
                assert created["session"]["audio"]["input"]["turn_detection"] is None
                assert created["session"]["audio"]["output"]["voice"] == "marin"
                assert sim.calls[0].labels == ["oai-events"] and sim.connections == 1
            finally:
                await c.close()
        assert sim.calls[0].closed

    run(body())


def test_azure_path_and_api_key_header() -> None:
    """Azure's /openai/v1/realtime/calls with an api-key header is answered like the OpenAI path."""

    async def body() -> None:
        async with rtc_simulator(api_key=KEY, **FAST) as sim, \
                call(sim, {"api-key": KEY}, path="/openai/v1/realtime/calls"):
            assert sim.calls[0].path == "/openai/v1/realtime/calls"

    run(body())


def test_a_wrong_or_missing_key_is_refused_401_with_a_json_error() -> None:
    async def body() -> None:
        async with rtc_simulator(api_key=KEY, **FAST) as sim:
            c = RtcClient()
            try:
                sdp = await c.offer()
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}):
                    status, _, text = await post(sim.calls_url, multipart(sdp), headers)
                    assert status == 401, (headers, text)
                    assert error_of(text)["code"] == "invalid_api_key"
                assert sim.calls == []
            finally:
                await c.close()

    run(body())


def test_raw_sdp_is_only_for_an_ephemeral_key() -> None:
    """A raw application/sdp body with a standard key is a 400 (that mode is for ek_ tokens); with an ek_ token
    the call is answered with the default session."""

    async def body() -> None:
        async with rtc_simulator(api_key=KEY, **FAST) as sim:
            c = RtcClient()
            try:
                sdp = await c.offer()
                raw = {"Content-Type": "application/sdp"}
                status, _, text = await post(sim.calls_url, sdp, {**raw, "Authorization": f"Bearer {KEY}"})
                assert status == 400, text
                assert "ephemeral" in error_of(text)["message"]
                status, headers, answer = await post(sim.calls_url, sdp, {**raw, "Authorization": "Bearer ek_abc123"})
                assert status == 201, answer
                assert headers["Location"] == f"/v1/realtime/calls/{sim.calls[0].id}"
                await c.answer(answer)
                assert (await c.expect("session.created"))["session"]["model"] == "gpt-realtime"
            finally:
                await c.close()

    run(body())


def test_a_bad_session_part_or_a_429_is_a_json_error() -> None:
    """The session part is checked as session.update checks it; refuse_429 answers the next POST with 429."""

    async def body() -> None:
        async with rtc_simulator(**FAST) as sim:
            c = RtcClient()
            try:
                sdp = await c.offer()
                status, _, text = await post(sim.calls_url, multipart(sdp, {"type": "realtime"}))
                assert status == 400 and error_of(text)["param"] == "session.model"
                status, _, text = await post(sim.calls_url, multipart(sdp, {**PTT_SESSION, "voice": "alloy"}))
                assert status == 400 and error_of(text)["code"] == "unknown_parameter"
                for offer in ("v=0\r\n", sdp.replace("m=audio", "m=video")):
                    status, _, text = await post(sim.calls_url, multipart(offer))
                    assert status == 400 and error_of(text)["code"] == "invalid_offer", text
                sim.arm_fault("refuse_429")
                status, _, text = await post(sim.calls_url, multipart(sdp))
                assert status == 429 and error_of(text)["code"] == "rate_limit_exceeded"
                assert sim.calls == [] and sim.faults_fired == ["refuse_429"]
            finally:
                await c.close()

    run(body())


def test_models_lookup() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{sim.port}/v1/models/gpt-realtime") as resp:
                assert resp.status == 200 and (await resp.json())["id"] == "gpt-realtime"
            async with http.get(f"http://127.0.0.1:{sim.port}/v1/models/gpt-nope") as resp:
                assert resp.status == 404
            assert sim.model_lookups == ["gpt-realtime", "gpt-nope"]

    run(body())


# ------------------------------------------------------------------------------------------- the session


def test_session_update_over_the_data_channel() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, call(sim, {}) as c:
            await c.send("session.update", session=PTT_SESSION)
            updated = await c.expect("session.updated")
            assert updated["session"]["instructions"] == PTT_SESSION["instructions"]
            assert updated["session"]["audio"]["input"]["turn_detection"] is None

    run(body())


def test_the_mic_track_is_decoded_into_the_committed_audio() -> None:
    """The client's Opus track (a 440 Hz tone) arrives decoded at 24 kHz: clear drops what came before, commit
    takes what came since, and the committed audio is the tone."""

    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, call(sim, {}) as c:
            await ask(c, sim, ms=300)
            assert len(sim.committed_audio) == 1 and sim.committed_formats == ["audio/pcm"]
            audio = sim.committed_audio[0]
            assert audio.size >= 300 * RATE // 1000
            assert rms(audio[RATE // 20:]) > 0.5 * 0.3 * 32767 / np.sqrt(2)  # the tone's energy, not noise
            assert dominant_hz(audio) == pytest.approx(MIC_HZ, abs=10)
            # the data channel's commit is recorded with its arrival time, as over WebSocket
            assert [e["type"] for e in sim.client_events].count("input_audio_buffer.commit") == 1
            assert len(sim.client_times) == len(sim.client_events)

    run(body())


def test_appends_over_the_data_channel_are_taken_as_pcm16() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, call(sim, {}, mic_hz=None) as c:
            await c.send("input_audio_buffer.clear")
            await c.expect("input_audio_buffer.cleared")
            await c.send("input_audio_buffer.append", audio=pcm_to_b64(tone(1000.0, 300)))
            await c.send("input_audio_buffer.commit")
            await c.expect("input_audio_buffer.committed")
            assert dominant_hz(sim.committed_audio[0]) == pytest.approx(1000.0, abs=10)

    run(body())


def test_a_reply_plays_on_the_track_with_started_then_done_then_stopped() -> None:
    """The reply's audio arrives on the remote track (the reply tone, all of it), never as delta events;
    output_audio_buffer.started follows content_part.added, and response.done comes before stopped: generation
    runs ahead of the paced playout."""

    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, call(sim, {}) as c:
            await ask(c, sim)
            await c.send("response.create")
            events = await c.until("output_audio_buffer.stopped")
            types = [e["type"] for e in events]
            assert "response.output_audio.delta" not in types
            assert types.index("response.content_part.added") < types.index("output_audio_buffer.started") \
                < types.index("response.done") < types.index("output_audio_buffer.stopped")
            done = next(e for e in events if e["type"] == "response.done")
            response_id = done["response"]["id"]
            assert done["response"]["status"] == "completed"
            assert {e["response_id"] for e in events if e["type"].startswith("output_audio_buffer.")} \
                == {response_id}
            assert any(e["type"] == "response.output_audio_transcript.delta" for e in events)
            item_id = done["response"]["output"][0]["id"]
            assert sim.sent_audio_ms[item_id] == FAST["reply_ms"]
            assert item_id in sim.first_delta_delay_s
            call_record = sim.calls[0]
            assert call_record.played_samples == call_record.written_samples == FAST["reply_ms"] * RATE // 1000
            # all of it reaches the client (the last frames may still be in flight when stopped arrives)
            await eventually(lambda: len(c.loud_frames()) >= FAST["reply_ms"] // 20 - 2, "the reply audio")
            heard = np.concatenate(c.loud_frames())
            assert dominant_hz(heard) == pytest.approx(REPLY_HZ, abs=10)

    run(body())


def test_cancel_keeps_the_buffered_audio_playing_until_clear_empties_the_track() -> None:
    """response.cancel stops generation (response.done cancelled), but what is in the track keeps playing;
    output_audio_buffer.clear empties it: cleared, no stopped, and the rest of the reply never arrives."""

    async def body() -> None:
        async with rtc_simulator(voice="tone", tone_hz=REPLY_HZ, first_delta_delay_ms=10.0, speedup=3.0,
                                 reply_ms=4000) as sim, call(sim, {}) as c:
            await ask(c, sim)
            await c.send("response.create")
            started = (await c.until("output_audio_buffer.started"))[-1]
            response_id = started["response_id"]
            await eventually(lambda: len(c.loud_frames()) >= 5, "the reply starts playing")
            await c.send("response.cancel")
            done = (await c.until("response.done"))[-1]
            assert done["response"]["status"] == "cancelled"
            record = sim.calls[0]
            assert record.written_samples < 4000 * RATE // 1000  # generation stopped
            assert record.played_samples < record.written_samples  # and it was ahead of the playout
            heard_at_done = len(c.loud_frames())
            await eventually(lambda: len(c.loud_frames()) >= heard_at_done + 5, "buffered audio keeps playing")
            await c.send("output_audio_buffer.clear")
            cleared = await c.expect("output_audio_buffer.cleared")
            assert cleared["response_id"] == response_id
            assert sim.output_clears and sim.output_clears[0][0] == response_id and sim.output_clears[0][1] > 0
            played = record.played_samples
            assert played < record.written_samples  # the rest was dropped
            mark = len(c.frames)
            # the audio stops: a run of silent frames arrives, and the track plays nothing more of the reply
            await eventually(lambda: any(all(rms(f) < LOUD_RMS for f in c.frames[i:i + 10])
                                         for i in range(mark, max(mark, len(c.frames) - 9))), "silence")
            assert record.played_samples == played
            assert len(c.loud_frames()) * FRAME <= played + 2 * FRAME
            # the session goes on: a new question gets a whole new reply
            await ask(c, sim)
            assert not any(e["type"] == "output_audio_buffer.stopped" for e in sim.server_events)

    run(body())


def test_truncate_is_checked_against_the_audio_generated() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST) as sim, call(sim, {}) as c:
            await ask(c, sim)
            await c.send("response.create")
            done = (await c.until("response.done"))[-1]
            item_id = done["response"]["output"][0]["id"]
            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=5000)
            error = (await c.until("error"))[-1]["error"]
            assert error["code"] == "invalid_value" and error["param"] == "audio_end_ms"
            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=200)
            truncated = (await c.until("conversation.item.truncated"))[-1]
            assert truncated["audio_end_ms"] == 200 and sim.truncations == [(item_id, 200)]

    run(body())


def test_hangup_closes_the_call() -> None:
    async def body() -> None:
        async with rtc_simulator(api_key=KEY, **FAST) as sim, call(sim) as c:
            call_id = sim.calls[0].id
            status, _, text = await post(f"{sim.calls_url}/{call_id}/hangup", None, {"Authorization": f"Bearer {KEY}"})
            assert status == 200, text
            await asyncio.wait_for(c.closed.wait(), 10 * UNIT_S)  # the data channel closes on the client
            assert sim.hangups == [call_id] and sim.calls[0].hung_up and sim.calls[0].closed
            status, _, text = await post(f"{sim.calls_url}/{call_id}/hangup", None, {"Authorization": f"Bearer {KEY}"})
            assert status == 404 and error_of(text)["param"] == "call_id"

    run(body())


def test_drop_mid_reply_closes_the_peer_connection() -> None:
    async def body() -> None:
        async with rtc_simulator(**{**FAST, "speedup": 4.0}) as sim, call(sim, {}) as c:
            await ask(c, sim)
            sim.arm_fault("drop_mid_reply")
            await c.send("response.create")
            await asyncio.wait_for(c.closed.wait(), 10 * UNIT_S)  # the data channel closes on the client
            await eventually(lambda: sim.calls[0].closed, "the simulator's side of the call is closed")
            assert sim.faults_fired == ["drop_mid_reply"]
            assert not any(e["type"] == "response.done" for e in sim.server_events)

    run(body())


def test_output_audio_buffer_clear_is_still_refused_over_websocket() -> None:
    """The transport hook: only the WebRTC session overrides it."""
    from tests.sim.conftest import client, simulator

    async def body() -> None:
        async with simulator(**FAST) as sim, client(sim.url) as c:
            await c.send("output_audio_buffer.clear")
            error = await c.expect("error")
            assert error["error"]["code"] == "invalid_event"

    run(body())


def test_the_session_expires_and_the_call_closes() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST, session_lifetime_s=0.3) as sim, call(sim, {}) as c:
            error = (await c.until("error"))[-1]["error"]
            assert error["code"] == "session_expired"
            await asyncio.wait_for(c.closed.wait(), 10 * UNIT_S)
            await eventually(lambda: sim.calls[0].closed, "the simulator's side of the call is closed")

    run(body())


def test_the_client_leaving_ends_the_call() -> None:
    async def body() -> None:
        async with rtc_simulator(**FAST) as sim:
            async with call(sim, {}):
                pass
            await eventually(lambda: sim.calls[0].closed, "the call is closed")
            assert sim.session_of(sim.calls[0].id) is None

    run(body())


def test_a_channel_with_another_label_is_closed() -> None:
    """Events travel only on oai-events: a channel labelled otherwise is closed and gets no session."""

    async def body() -> None:
        async with rtc_simulator(**FAST) as sim:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                channel = pc.createDataChannel("realtime-channel")
                closed = asyncio.Event()
                channel.on("close", closed.set)
                pc.addTrack(MicTrack())
                await pc.setLocalDescription(await pc.createOffer())
                status, _, answer = await post(sim.calls_url, multipart(pc.localDescription.sdp))
                assert status == 201, answer
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await asyncio.wait_for(closed.wait(), 10 * UNIT_S)
                assert sim.calls[0].labels == ["realtime-channel"] and sim.server_events == []
            finally:
                await pc.close()

    run(body())


def test_a_tool_call_with_a_spoken_preamble_then_the_grounded_answer() -> None:
    """Function calls work over the data channel as over WebSocket: the preamble plays on the track (started,
    stopped), the response ends with the call, and the answer after the output speaks what it said."""
    tool = {"type": "function", "name": "lookup_exhibit_knowledge", "description": "Look up a fact.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}

    async def body() -> None:
        async with rtc_simulator(**FAST, tool_call="lookup_exhibit_knowledge", preamble_ms=200) as sim, \
                call(sim, {}, session={**PTT_SESSION, "tools": [tool]}) as c:
            await ask(c, sim)
            await c.send("response.create")
            events = await c.until("response.done")
            done = events[-1]["response"]
            assert [item["type"] for item in done["output"]] == ["message", "function_call"]
            assert "output_audio_buffer.started" in [e["type"] for e in events]
            await c.until("output_audio_buffer.stopped")
            function_call = done["output"][-1]
            await c.send("conversation.item.create", item={"type": "function_call_output",
                                                           "call_id": function_call["call_id"],
                                                           "output": '{"fact": "Laid around 320 AD."}'})
            await c.until("conversation.item.done")
            await c.send("response.create")
            answer = await c.until("response.done")
            assert [i["type"] for i in answer[-1]["response"]["output"]] == ["message"]
            text = "".join(e["delta"] for e in answer if e["type"] == "response.output_audio_transcript.delta")
            assert "Laid around 320 AD." in text
            await c.until("output_audio_buffer.stopped")
            assert sim.calls[0].played_samples == (200 + FAST["reply_ms"]) * RATE // 1000

    run(body())
