"""The WebRTC link (adapters/webrtc.py) on real parts: aiortc peers over loopback UDP, the WebRTC simulator on
real HTTP. What is asserted is what the turn sees and what the server got, never timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiortc")

from kioskd.adapters.link import LinkOptions  # noqa: E402
from kioskd.adapters.webrtc import RtcLink, calls_url  # noqa: E402
from kioskd.core import events as ev  # noqa: E402
from kioskd.core.pcm import tone  # noqa: E402
from kioskd.errors import AuthError, ConnectionLost, HandshakeError, classify  # noqa: E402
from kioskd.sim.realtime_session import SimOptions  # noqa: E402
from kioskd.sim.web import port_of, serve_app  # noqa: E402
from kioskd.sim.webrtc_server import RtcSimulator  # noqa: E402
from tests.conftest import UNIT_S, run  # noqa: E402
from tests.realtime_schema import validate_client, validate_server  # noqa: E402

KEY = "test-key-not-a-secret-0123456789"
REPLY_HZ = 1000.0
QUESTION_HZ = 300.0


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s * UNIT_S
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def dominant_hz(pcm: np.ndarray, rate_hz: int = 24000) -> float:
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate_hz)[int(np.argmax(spectrum[1:])) + 1])


class Session:
    """A link to the simulator and everything it posted."""

    def __init__(self, sim: RtcSimulator, key: str | None = KEY) -> None:
        self.sim = sim
        self.got: list[ev.Input] = []
        self.link = RtcLink(LinkOptions(sim.url, api_key=key, connect_timeout_s=10 * UNIT_S), self.got.append,
                            "gpt-realtime")

    def named(self, kind: type) -> list[Any]:
        return [g for g in self.got if isinstance(g, kind)]

    async def open(self) -> None:
        self.link.start()
        await until(lambda: bool(self.named(ev.SessionCreated)) or bool(self.named(ev.Disconnected)), "the call")
        assert not self.named(ev.Disconnected), self.named(ev.Disconnected)
        self.link.send(ev.ConfigureSession("cfg_1", "marin", "Be brief."))
        await until(lambda: bool(self.named(ev.SessionUpdated)), "session.updated")

    async def ask(self, seconds: float = 0.6) -> None:
        """A question as the core sends it: the pre-roll and appends in 10 ms blocks at real time, then the
        commit and the request."""
        self.link.send(ev.StartQuestion())
        pcm = tone(QUESTION_HZ, int(seconds * 1000), 24000, 0.3)
        for i in range(0, pcm.size, 240):
            self.link.send(ev.AppendAudio(pcm[i:i + 240]))
            await asyncio.sleep(0.01)
        self.link.send(ev.Commit())
        self.link.send(ev.RequestReply("req_1"))


def simulator(**options: Any) -> RtcSimulator:
    defaults: dict[str, Any] = {"api_key": KEY, "voice": "tone", "tone_hz": REPLY_HZ, "reply_ms": 800,
                                "first_delta_delay_ms": 50}
    return RtcSimulator(SimOptions(**{**defaults, **options}))


def test_calls_url_follows_the_realtime_url() -> None:
    assert (calls_url("wss://api.openai.com/v1/realtime?model=gpt-realtime")
            == "https://api.openai.com/v1/realtime/calls")
    assert (calls_url("wss://r.openai.azure.com/openai/v1/realtime?model=dep")
            == "https://r.openai.azure.com/openai/v1/realtime/calls")
    assert calls_url("ws://127.0.0.1:8/v1/realtime") == "http://127.0.0.1:8/v1/realtime/calls"


def test_a_question_and_its_reply_over_webrtc() -> None:
    """The call is made with the key and the model; the whole question (its last word too) is at the server when
    the commit arrives; the reply's audio reaches the turn as deltas of its item, and the reply's end only after
    its audio; every event both ways is a valid GA event."""
    async def main() -> None:
        async with simulator() as sim:
            s = Session(sim)
            await s.open()
            await s.ask(0.6)
            await until(lambda: bool(s.named(ev.ResponseDone)), "the reply's end")
            await s.link.close()
            assert [c.model for c in sim.calls] == ["gpt-realtime"]
            assert sim.calls[0].labels == ["oai-events"]

            [question] = sim.committed_audio
            assert dominant_hz(question) == pytest.approx(QUESTION_HZ, abs=15)
            loud = np.flatnonzero(np.abs(question.astype(np.int32)) > 2000)
            assert (loud[-1] - loud[0]) / 24000 > 0.55  # the last word was not cut before the commit

            deltas = s.named(ev.AudioDelta)
            [done] = s.named(ev.ResponseDone)
            assert {d.response_id for d in deltas} == {done.response_id}
            reply = np.concatenate([d.pcm for d in deltas])
            assert dominant_hz(reply) == pytest.approx(REPLY_HZ, abs=15)
            assert reply.size / 24000 == pytest.approx(0.8, abs=0.1)  # all of it, and not the idle silence after
            order = [type(g) for g in s.got if isinstance(g, (ev.AudioDelta, ev.AudioDone, ev.ResponseDone))]
            assert order[-2:] == [ev.AudioDone, ev.ResponseDone] and ev.AudioDone not in order[:-2]
            assert done.usage and done.usage["total_tokens"] > 0

            assert sim.hangups == [sim.calls[0].id]
            types = [e["type"] for e in sim.client_events]
            assert "input_audio_buffer.append" not in types  # the audio went on the track
            assert types.index("input_audio_buffer.commit") < types.index("response.create")
            for event in sim.client_events:
                validate_client(event)
            for event in sim.server_events:
                validate_server(event)
    run(main())


def test_barge_in_clears_the_servers_buffer_and_truncates() -> None:
    """cancel + clear + truncate at the heard position: the server drops what it still held, the turn gets no
    more of the cancelled reply, and the next question is answered."""
    async def main() -> None:
        async with simulator(reply_ms=4000) as sim:
            s = Session(sim)
            await s.open()
            await s.ask(0.3)
            await until(lambda: len(s.named(ev.AudioDelta)) >= 20, "some of the reply")
            [created] = s.named(ev.ResponseCreated)
            item = s.named(ev.AudioDelta)[0].item_id
            s.link.send(ev.CancelReply(created.response_id))
            s.link.send(ev.ClearOutput())
            s.link.send(ev.Truncate(item, 300))
            cut = len(s.got)
            await until(lambda: bool(sim.output_clears) and bool(sim.truncations), "the clear and the truncate")
            await until(lambda: bool(s.named(ev.ResponseDone)), "the cancelled response's end")
            await asyncio.sleep(0.3)
            assert not [g for g in s.got[cut:] if isinstance(g, ev.AudioDelta)]
            assert sim.truncations == [(item, 300)]
            assert sim.output_clears[0][1] > 0  # audio the server had not played yet was dropped
            assert s.named(ev.ResponseDone)[0].status == "cancelled"
            await s.ask(0.3)
            await until(lambda: len(s.named(ev.ResponseDone)) == 2, "the next answer")
            await s.link.close()
    run(main())


@pytest.mark.parametrize(("key", "fault", "error"), [("wrong-key", None, AuthError),
                                                     (KEY, "refuse_429", HandshakeError)])
def test_a_refused_call_is_one_disconnected_with_its_cause(key: str, fault: str | None, error: type) -> None:
    async def main() -> None:
        async with simulator() as sim:
            if fault:
                sim.arm_fault(fault)
            s = Session(sim, key=key)
            s.link.start()
            await until(lambda: bool(s.named(ev.Disconnected)), "the refusal")
            await asyncio.sleep(0.1)
            [gone] = s.got
            assert isinstance(gone, ev.Disconnected) and isinstance(gone.cause, error)
            assert classify(gone.cause) == ("fatal" if error is AuthError else "retry")
            assert "wrong-key" not in str(gone.cause) and KEY not in str(gone.cause)
            await s.link.close()
    run(main())


def test_a_call_dropped_mid_reply_is_reported_once_and_close_reports_nothing() -> None:
    async def main() -> None:
        async with simulator(reply_ms=3000) as sim:
            s = Session(sim)
            await s.open()
            sim.arm_fault("drop_mid_reply")
            await s.ask(0.3)
            await until(lambda: bool(s.named(ev.Disconnected)), "the drop", timeout_s=40)
            await asyncio.sleep(0.2)
            [gone] = s.named(ev.Disconnected)
            assert "the server hung up" in str(gone.cause), gone.cause  # one line a technician reads
            await s.link.close()

            quiet = Session(sim)
            await quiet.open()
            before = len(quiet.got)
            await quiet.link.close()
            await asyncio.sleep(0.2)
            assert len(quiet.got) == before  # kioskd closed it: nothing reported after
            assert sim.calls[-1].hung_up
    run(main())


def test_an_answered_call_with_no_udp_path_says_so() -> None:
    """The POST is answered but no packet can get through (a network that blocks UDP: here the answer's
    candidates are taken out): one Disconnected whose cause names UDP and the websocket way, and no task of
    aiortc's raising into nobody (asyncio's "Task exception was never retrieved", a traceback a call)."""
    unretrieved: list[str] = []

    async def main() -> None:
        import gc

        import kioskd.adapters.webrtc as webrtc

        asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context["message"]))
        real = webrtc.RtcLink._post_offer

        async def unreachable(self: RtcLink, http: Any, offer: str) -> str:
            answer = await real(self, http, offer)
            return "\r\n".join(line for line in answer.split("\r\n") if not line.startswith("a=candidate"))

        webrtc.RtcLink._post_offer = unreachable  # type: ignore[method-assign]
        try:
            for _ in range(3):
                async with simulator() as sim:
                    got: list[ev.Input] = []
                    link = RtcLink(LinkOptions(sim.url, api_key=KEY, connect_timeout_s=2.0), got.append,
                                   "gpt-realtime")
                    link.start()
                    await until(lambda: bool(got), "the failure", timeout_s=20)
                await asyncio.sleep(0.3)
                await link.close()
                [gone] = got
                assert isinstance(gone, ev.Disconnected) and isinstance(gone.cause, (TimeoutError, ConnectionLost))
                assert "UDP" in str(gone.cause) and "websocket" in str(gone.cause)
                assert classify(gone.cause) == "retry"
        finally:
            webrtc.RtcLink._post_offer = real  # type: ignore[method-assign]
        gc.collect()  # a task whose exception nobody retrieved says so when it is collected
        await asyncio.sleep(0.1)
    run(main())
    assert not unretrieved, unretrieved


def test_a_data_channel_message_over_the_frame_limit_ends_the_session() -> None:
    """aiortc reassembles a data-channel message of any size (a server may ignore the max-message-size kioskd
    offers): one over the WebSocket's 256 KiB frame limit is refused the same way, as one Disconnected, and the
    call is hung up without waiting for kioskd to close the link."""
    async def main() -> None:
        async with simulator() as sim:
            s = Session(sim)
            await s.open()
            channel = sim.session_of(sim.calls[0].id).channel
            channel.transport._remote_max_message_size = 0  # a server that ignores kioskd's a=max-message-size
            channel.send('{"type":"error","error":{"type":"x","message":"' + "x" * (300 * 1024) + '"}}')
            await until(lambda: bool(s.named(ev.Disconnected)), "the refusal")
            await until(lambda: sim.calls[0].hung_up, "the hangup")
            [gone] = s.named(ev.Disconnected)
            assert isinstance(gone.cause, ConnectionLost) and "256 KiB" in str(gone.cause)
            assert classify(gone.cause) == "retry"
            assert not s.named(ev.ServerError)
            await s.link.close()
            assert len(s.named(ev.Disconnected)) == 1
    run(main())


def test_a_message_too_big_to_put_together_drops_the_connection_before_it_is_held() -> None:
    """A server that goes on sending one message past what aiortc's receive window allows: kioskd does not hold
    it (aiortc would, without bound, from a sender ignoring the window; one keeping to it would stall for ever):
    the connection is dropped at rtc_internals.REASSEMBLY_MAX_BYTES, said as such, once."""
    from kioskd.adapters import rtc_internals

    async def main() -> None:
        async with simulator() as sim:
            s = Session(sim)
            await s.open()
            channel = sim.session_of(sim.calls[0].id).channel
            channel.transport._remote_max_message_size = 0  # a server that ignores kioskd's a=max-message-size
            channel.send('{"type":"error","error":{"type":"x","message":"' + "x" * (3 << 20) + '"}}')
            await until(lambda: bool(s.named(ev.Disconnected)), "the drop", timeout_s=30)
            [gone] = s.named(ev.Disconnected)
            assert isinstance(gone.cause, ConnectionLost)
            assert f"{rtc_internals.REASSEMBLY_MAX_BYTES // 1024} KiB" in str(gone.cause)
            assert classify(gone.cause) == "retry"
            await s.link.close()
            assert len(s.named(ev.Disconnected)) == 1
    run(main())


def test_a_201_with_a_garbage_answer_is_one_disconnected_naming_the_endpoint() -> None:
    """A 201 whose body is no SDP answer: the cause names the calls endpoint and the answer, not only aiortc's
    words, and it is worth a retry."""
    from aiohttp import web

    async def main() -> None:
        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=201, text="<html>hello</html>", headers={"Location": "/v1/realtime/calls/c"})

        app = web.Application()
        app.router.add_post("/v1/realtime/calls", answer)
        runner = await serve_app(app, "127.0.0.1", 0)
        port = port_of(runner)
        got: list[ev.Input] = []
        link = RtcLink(LinkOptions(f"ws://127.0.0.1:{port}/v1/realtime", api_key=KEY, connect_timeout_s=10 * UNIT_S),
                       got.append, "gpt-realtime")
        try:
            link.start()
            await until(lambda: bool(got), "the refusal")
            await link.close()
            [gone] = got
            assert isinstance(gone, ev.Disconnected) and isinstance(gone.cause, ConnectionLost)
            assert f"127.0.0.1:{port}/v1/realtime/calls: unusable SDP answer" in str(gone.cause)
            assert KEY not in str(gone.cause) and classify(gone.cause) == "retry"
        finally:
            await runner.cleanup()
    run(main())


def test_the_reply_track_changing_format_mid_reply_is_still_the_reply() -> None:
    """The answer may list Opus and PCMU, and aiortc decodes each packet by its payload type: a server switching
    codec mid-reply turns 48 kHz stereo frames into 8 kHz mono ones. The reply goes on; the session does not end
    on av's "Frame does not match AudioResampler setup"."""
    import av
    from aiortc.mediastreams import MediaStreamError

    def frame(rate: int, layout: str) -> av.AudioFrame:
        channels = 2 if layout == "stereo" else 1
        pcm = np.repeat(tone(REPLY_HZ, 20, rate, 0.3), channels).reshape(1, -1)
        f = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        f.sample_rate = rate
        return f

    class Track:
        def __init__(self) -> None:
            self.frames = [frame(48000, "stereo")] * 10 + [frame(8000, "mono")] * 10 + [frame(48000, "stereo")] * 10

        async def recv(self) -> av.AudioFrame:
            if not self.frames:
                raise MediaStreamError
            return self.frames.pop(0)

    async def main() -> None:
        got: list[ev.Input] = []
        link = RtcLink(LinkOptions("ws://127.0.0.1:9/v1/realtime", api_key=KEY), got.append, "gpt-realtime")
        link._downlink.playing = ("resp_1", "item_1")
        with pytest.raises(ConnectionLost, match="audio track ended"):
            await link._read_audio(Track())
        samples = sum(d.pcm.size for d in got if isinstance(d, ev.AudioDelta))
        assert samples / 24000 == pytest.approx(0.6, abs=0.05)
    run(main())


def test_a_call_closed_before_it_connected_is_hung_up() -> None:
    """The call exists from its 201: closed while ICE and DTLS are still connecting (or never connect), it is hung
    up all the same, and nothing is reported."""
    async def main() -> None:
        async with simulator() as sim:
            s = Session(sim)
            s.link.start()
            await until(lambda: s.link._call is not None, "the 201")
            await s.link.close()
            assert sim.hangups == [sim.calls[0].id]
            assert s.got == []
    run(main())


def test_a_hangup_whose_answer_never_ends_does_not_hold_the_session() -> None:
    """The hangup is bounded as a whole, not per read: a server that trickles its answer to the hangup forever
    does not hold back the Disconnected nor close()."""
    from aiohttp import web

    async def main() -> None:
        async def answer(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=201, text="no sdp", headers={"Location": "/v1/realtime/calls/c"})

        async def hangup(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            while True:  # one byte well inside httpx's read timeout, for ever
                await response.write(b" ")
                await asyncio.sleep(0.2)

        app = web.Application()
        app.router.add_post("/v1/realtime/calls", answer)
        app.router.add_post("/v1/realtime/calls/c/hangup", hangup)
        runner = await serve_app(app, "127.0.0.1", 0)
        port = port_of(runner)
        got: list[ev.Input] = []
        link = RtcLink(LinkOptions(f"ws://127.0.0.1:{port}/v1/realtime", api_key=KEY, connect_timeout_s=10 * UNIT_S),
                       got.append, "gpt-realtime")
        try:
            link.start()
            await until(lambda: bool(got), "the Disconnected", timeout_s=20)
            await asyncio.wait_for(link.close(), 20 * UNIT_S)
            [gone] = got
            assert isinstance(gone, ev.Disconnected) and "unusable SDP answer" in str(gone.cause)
        finally:
            await runner.cleanup()
    run(main(), timeout_units=60)


def test_a_microphone_track_that_stops_sending_ends_the_session() -> None:
    """The commit waits for the question's tail to be handed to the encoder; a sender that stopped taking frames
    would hold the commit, and every event after it, for ever: the session ends as lost instead."""
    async def main() -> None:
        async with simulator() as sim:
            s = Session(sim)
            await s.open()
            [sender] = s.link._pc.getSenders()
            await sender.stop()
            await s.ask(0.3)
            await until(lambda: bool(s.named(ev.Disconnected)), "the Disconnected")
            [gone] = s.named(ev.Disconnected)
            assert isinstance(gone.cause, ConnectionLost) and "microphone track" in str(gone.cause)
            assert classify(gone.cause) == "retry"
            await s.link.close()
    run(main())


def test_azure_calls_path_and_api_key_header() -> None:
    """An Azure Realtime URL (``/openai/v1/realtime``, ``auth: api-key``): the call goes to its
    ``/openai/v1/realtime/calls`` with the ``api-key`` header and the deployment as the session's model, and the
    hangup follows the call's Location."""
    async def main() -> None:
        async with simulator() as sim:
            url = f"ws://127.0.0.1:{sim.port}/openai/v1/realtime?model=my-deployment"
            got: list[ev.Input] = []
            link = RtcLink(LinkOptions(url, auth="api-key", api_key=KEY, connect_timeout_s=10 * UNIT_S), got.append,
                           "my-deployment")
            link.start()
            await until(lambda: any(isinstance(g, (ev.SessionCreated, ev.Disconnected)) for g in got), "the call")
            assert not [g for g in got if isinstance(g, ev.Disconnected)], got
            await link.close()
            [call] = sim.calls
            assert (call.path, call.model) == ("/openai/v1/realtime/calls", "my-deployment")
            assert sim.request_headers[-1].get("api-key") == KEY and "authorization" not in sim.request_headers[-1]
            assert sim.hangups == [call.id]
    run(main())
