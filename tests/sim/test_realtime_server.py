"""The Realtime simulator on real loopback WebSockets, driven by a scripted raw client.

Every frame the tests send is checked against openai's GA client models first, every frame received (and, at the
end, every frame the simulator recorded as sent) against the GA server models, with no undeclared keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kioskd.core.g711 import ulaw_encode
from kioskd.core.pcm import ms_to_samples, pcm_to_b64, tone
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions, serve
from kioskd.sim.voice import reply_audio
from tests.conftest import UNIT_S, run
from tests.sim.conftest import FAST, Client, audio_of, client, configure, simulator

KEY = "fake-test-key-not-a-secret-0123456789"
QUESTION_HZ = 300.0

#: reference §6, with the deltas collapsed: the order a push-to-talk turn's events arrive in
TURN_ORDER = [
    "input_audio_buffer.cleared",
    "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
    "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
    "response.content_part.added", "deltas",
    "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
    "response.output_item.done", "conversation.item.done", "response.done",
]
DELTAS = ("response.output_audio.delta", "response.output_audio_transcript.delta")


def collapse(types: list[str]) -> list[str]:
    """Event types with each run of audio/transcript deltas folded into one "deltas"."""
    out: list[str] = []
    for t in types:
        t = "deltas" if t in DELTAS else t
        if not (t == "deltas" and out and out[-1] == "deltas"):
            out.append(t)
    return out


async def ask(c: Client, question_ms: int = 500) -> list[dict[str, Any]]:
    """One push-to-talk turn: clear, 100 ms appends, commit, response.create; every frame up to response.done."""
    await c.send("input_audio_buffer.clear")
    question = tone(QUESTION_HZ, question_ms)
    for start in range(0, question.size, ms_to_samples(100)):
        await c.send("input_audio_buffer.append", audio=pcm_to_b64(question[start:start + ms_to_samples(100)]))
    await c.send("input_audio_buffer.commit")
    await c.send("response.create", response={})
    return await c.until("response.done")


def error_of(event: dict[str, Any]) -> dict[str, Any]:
    assert event["type"] == "error", event
    err: dict[str, Any] = event["error"]
    assert err["type"] == "invalid_request_error"
    return err


# ------------------------------------------------------------------------------------------------ session


def test_connect_gets_a_full_ga_session() -> None:
    """The first frame is session.created with the GA defaults: server_vad on, voice alloy, PCM 24 kHz, an expiry."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            s = c.received[0]["session"]
            assert s["type"] == "realtime" and s["object"] == "realtime.session"
            assert s["id"].startswith("sess_") and s["model"] == "gpt-realtime"
            assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
            assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert s["audio"]["output"]["voice"] == "alloy"
            assert abs(s["expires_at"] - (time.time() + 3600)) < 120
            assert c.received[0]["event_id"].startswith("event_")
            assert sim.connections == 1

    run(scenario())


def test_azure_path_takes_the_deployment_as_model() -> None:
    """/openai/v1/realtime?model=<deployment> is served too; the session reports that model."""

    async def scenario() -> None:
        async with simulator() as sim, client(f"ws://127.0.0.1:{sim.port}/openai/v1/realtime?model=kiosk-rt") as c:
            assert c.received[0]["session"]["model"] == "kiosk-rt"

    run(scenario())


def test_session_update_applies_only_what_is_present() -> None:
    """A GA session.update turns server_vad off and sets the voice; untouched fields keep their values; the
    reply is the whole effective session, without the client's event_id."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            created = c.received[0]["session"]
            s = (await configure(c))["session"]
            assert s["audio"]["input"]["turn_detection"] is None
            assert s["audio"]["output"]["voice"] == "marin"
            assert s["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
            assert s["max_output_tokens"] == 1024
            assert (s["id"], s["expires_at"], s["tracing"]) == (created["id"], created["expires_at"], None)
            assert not c.received[-1]["event_id"].startswith("evt_")

            await c.send("session.update", session={"type": "realtime", "instructions": ""})
            s2 = (await c.expect("session.updated"))["session"]
            assert s2["instructions"] == ""
            assert s2["audio"] == s["audio"]  # nothing else moved
            # the record of session.created still shows the session as it was then
            assert sim.server_events[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"

    run(scenario())


@pytest.mark.parametrize("key,value", [("voice", "alloy"), ("modalities", ["text", "audio"]),
                                       ("turn_detection", None), ("temperature", 0.8),
                                       ("input_audio_format", "pcm16")])
def test_beta_session_keys_are_unknown_parameters(key: str, value: object) -> None:
    """A beta key next to session.type is refused with unknown_parameter, and nothing of that update applies."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            await c.send_raw(json.dumps({"type": "session.update", "event_id": "evt_beta", "session": {
                "type": "realtime", "instructions": "changed", key: value}}))
            err = error_of(await c.recv())
            assert err["code"] == "unknown_parameter"
            assert err["message"] == f"Unknown parameter: 'session.{key}'."
            assert (err["param"], err["event_id"]) == (f"session.{key}", "evt_beta")
            await c.send("session.update", session={"type": "realtime"})
            assert (await c.expect("session.updated"))["session"]["instructions"] != "changed"

    run(scenario())


def test_session_update_without_type_is_refused() -> None:
    """session.type is required in GA."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            await c.send_raw(json.dumps({"type": "session.update", "event_id": "evt_nt",
                                         "session": {"instructions": "hi"}}))
            err = error_of(await c.recv())
            assert err["code"] == "missing_required_parameter" and "session.type" in err["message"]
            assert err["event_id"] == "evt_nt"

    run(scenario())


# ------------------------------------------------------------------------------------------------ a turn


def test_push_to_talk_turn_streams_the_whole_reply_in_order() -> None:
    """clear, appends, commit, response.create → the §6 sequence; the question arrives intact, the reply is
    reply_ms of audio with its transcript, and response.done carries status completed and usage."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, client(sim.url) as c:
            await configure(c)
            events = await ask(c)
            assert collapse([e["type"] for e in events]) == TURN_ORDER

            assert len(sim.committed_audio) == 1
            assert np.array_equal(sim.committed_audio[0], tone(QUESTION_HZ, 500))
            committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
            assert committed["previous_item_id"] is None
            user_item = next(e for e in events if e["type"] == "conversation.item.added")["item"]
            assert (user_item["id"], user_item["role"]) == (committed["item_id"], "user")
            assert user_item["content"][0]["type"] == "input_audio"

            response_id = next(e for e in events if e["type"] == "response.created")["response"]["id"]
            assert response_id.startswith("resp_")
            added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
            assert added["role"] == "assistant" and added["status"] == "in_progress"
            part = next(e for e in events if e["type"] == "response.content_part.added")["part"]
            assert part["type"] == "audio"
            for e in events:
                if e["type"] in DELTAS:
                    assert (e["response_id"], e["item_id"]) == (response_id, added["id"])

            audio = audio_of(events)
            assert audio.size == ms_to_samples(1000)
            assert sim.sent_audio_ms[added["id"]] == 1000
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
            assert text == SimOptions().reply_text
            done_transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
            assert done_transcript["transcript"] == text

            done = events[-1]["response"]
            assert (done["id"], done["status"]) == (response_id, "completed")
            assert done["output"][0]["id"] == added["id"] and done["output"][0]["status"] == "completed"
            assert "audio" not in done["output"][0]["content"][0]
            usage = done["usage"]
            assert usage["output_tokens"] > 0 and usage["input_token_details"]["audio_tokens"] > 0
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

            # the next turn's items chain on to the previous ones
            events2 = await ask(c)
            committed2 = next(e for e in events2 if e["type"] == "input_audio_buffer.committed")
            assert committed2["previous_item_id"] == added["id"]

    run(scenario())


def test_commit_under_100_ms_is_refused_and_keeps_the_buffer() -> None:
    """50 ms → input_audio_buffer_commit_empty (message as recorded, event_id echoed); 50 ms more commits 100 ms."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, client(sim.url) as c:
            await c.send("input_audio_buffer.append", audio=pcm_to_b64(tone(QUESTION_HZ, 50)))
            commit_id = await c.send("input_audio_buffer.commit")
            err = error_of(await c.recv())
            assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == commit_id
            assert err["message"] == ("Error committing input audio buffer: buffer too small. Expected at least "
                                      "100ms of audio, but buffer only has 50.00ms of audio.")
            assert sim.committed_audio == []

            await c.send("input_audio_buffer.append", audio=pcm_to_b64(tone(QUESTION_HZ, 50)))
            await c.send("input_audio_buffer.commit")
            await c.expect("input_audio_buffer.committed")
            await c.expect("conversation.item.added")
            await c.expect("conversation.item.done")
            assert sim.committed_audio[0].size == ms_to_samples(100)

            await c.send("input_audio_buffer.commit")  # the buffer is empty again after a commit
            assert "0.00ms" in error_of(await c.recv())["message"]

    run(scenario())


def test_second_response_create_while_one_is_active() -> None:
    """conversation_already_has_active_response names the active response, which still completes."""

    async def scenario() -> None:
        async with simulator(voice="tone", first_delta_delay_ms=200.0, speedup=20.0, reply_ms=1000) as sim, \
                client(sim.url) as c:
            await c.send("response.create")
            created = await c.expect("response.created")
            second = await c.send("response.create")
            events = await c.until("error")
            err = error_of(events[-1])
            assert err["code"] == "conversation_already_has_active_response" and err["event_id"] == second
            assert created["response"]["id"] in err["message"]
            rest = await c.until("response.done")
            assert rest[-1]["response"]["status"] == "completed"
            assert audio_of(events + rest).size == ms_to_samples(1000)

    run(scenario())


def test_cancel_with_nothing_active() -> None:
    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            cancel_id = await c.send("response.cancel")
            err = error_of(await c.recv())
            assert err["code"] == "response_cancel_not_active" and err["event_id"] == cancel_id
            assert err["message"] == "Cancellation failed: no active response found"

    run(scenario())


# ------------------------------------------------------------------------------------------------ barge-in


def test_barge_in_cancel_and_truncate() -> None:
    """Cancel mid-stream: response.done cancelled (client_cancelled) and not one delta after it. A truncate within
    the audio sent is honoured and recorded; one beyond it is invalid_value with the recorded message."""

    async def scenario() -> None:
        async with simulator(voice="tone", first_delta_delay_ms=20.0, speedup=1.0, reply_ms=5000) as sim, \
                client(sim.url) as c:
            await configure(c)
            await c.send("response.create")
            events = await c.until("response.output_audio.delta")
            events += [await c.recv() for _ in range(2)]
            await c.send("response.cancel")
            events += await c.until("response.done")
            done = events[-1]["response"]
            assert done["status"] == "cancelled"
            assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
            assert done["output"][0]["status"] == "incomplete"
            tail = [e["type"] for e in events[-6:]]
            assert tail == ["response.output_audio.done", "response.output_audio_transcript.done",
                            "response.content_part.done", "response.output_item.done", "conversation.item.done",
                            "response.done"]

            item_id = events[-1]["response"]["output"][0]["id"]
            received_ms = audio_of(events).size * 1000 // 24000
            assert 0 < received_ms < 5000
            assert sim.sent_audio_ms[item_id] == received_ms  # everything sent arrived before response.done

            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=received_ms // 2)
            truncated = await c.expect("conversation.item.truncated")
            assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, received_ms // 2)
            assert sim.truncations == [(item_id, received_ms // 2)]

            beyond = received_ms + 100
            truncate_id = await c.send("conversation.item.truncate", item_id=item_id, content_index=0,
                                       audio_end_ms=beyond)
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"]) == ("invalid_value", truncate_id)
            assert err["message"] == f"Audio content of {received_ms}ms is already shorter than {beyond}ms."

            await c.send("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=0)
            assert error_of(await c.recv())["code"] == "item_not_found"
            assert sim.truncations == [(item_id, received_ms // 2)]

            # the stream really stopped: a later round trip brings no stray delta
            await asyncio.sleep(0.3 * UNIT_S)
            await c.send("input_audio_buffer.clear")
            assert (await c.recv())["type"] == "input_audio_buffer.cleared"
            assert sim.sent_audio_ms[item_id] == received_ms

    run(scenario())


def test_user_items_cannot_be_truncated() -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, client(sim.url) as c:
            events = await ask(c)
            user_item = next(e for e in events if e["type"] == "input_audio_buffer.committed")["item_id"]
            await c.send("conversation.item.truncate", item_id=user_item, content_index=0, audio_end_ms=0)
            assert error_of(await c.recv())["code"] == "invalid_value"
            assert sim.truncations == []

    run(scenario())


# ------------------------------------------------------------------------------------------------ handshake


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"api-key": "wrong-key"},
                                     {"Authorization": KEY}],
                         ids=["none", "wrong-bearer", "wrong-api-key", "bearer-missing"])
def test_wrong_or_missing_key_is_401_at_the_handshake(headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with simulator(api_key=KEY) as sim:
            with pytest.raises(InvalidStatus) as info:
                async with connect(sim.url, additional_headers=headers, open_timeout=10 * UNIT_S):
                    pass
            assert info.value.response.status_code == 401
            assert KEY.encode() not in info.value.response.body
            assert sim.connections == 0 and sim.server_events == []

    run(scenario())


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"api-key": KEY}],
                         ids=["bearer", "api-key"])
def test_right_key_is_accepted(headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with simulator(api_key=KEY) as sim, client(sim.url, headers) as c:
            assert c.received[0]["type"] == "session.created"
            name, value = next(iter(headers.items()))
            assert sim.request_headers[-1][name.lower()] == value
            assert sim.connections == 1

    run(scenario())


def test_unknown_path_is_404() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://127.0.0.1:{sim.port}/v1/chat", open_timeout=10 * UNIT_S):
                    pass
            assert info.value.response.status_code == 404

    run(scenario())


def test_beta_header_gets_beta_api_shape_disabled_and_close_4000() -> None:
    async def scenario() -> None:
        async with simulator() as sim:
            async with connect(sim.url, additional_headers={"OpenAI-Beta": "realtime=v1"},
                               open_timeout=10 * UNIT_S) as ws:
                c = Client(ws)
                err = error_of(await c.recv())
                assert err["code"] == "beta_api_shape_disabled"
                assert err["message"] == ("The Realtime Beta API is no longer supported. "
                                          "Please use /v1/realtime for the GA API.")
                with pytest.raises(ConnectionClosed) as info:
                    await c.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 4000
                assert info.value.rcvd.reason == "invalid_request_error.beta_api_shape_disabled"
            assert [e["type"] for e in sim.server_events] == ["error"]

    run(scenario())


# ------------------------------------------------------------------------------------------------ bad events


def test_malformed_and_unknown_events_are_invalid_event() -> None:
    """Garbage gets invalid_event (with the client's event_id when it can be read); the session goes on."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            await c.send_raw("{not json")
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"]) == ("invalid_event", None)

            await c.send_raw(json.dumps({"type": "response.audio.delta", "event_id": "evt_beta_name"}))
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"]) == ("invalid_event", "evt_beta_name")
            assert "response.audio.delta" in err["message"]

            await c.send_raw(json.dumps({"event_id": "evt_no_type"}))
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"], err["message"]) == (
                "invalid_event", "evt_no_type", "The 'type' field is missing.")

            await c.send_raw(json.dumps([1, 2]))
            assert error_of(await c.recv())["code"] == "invalid_event"

            await c.send_raw(json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_b64",
                                         "audio": "not base64!"}))
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"]) == ("invalid_value", "evt_b64")

            await c.send("input_audio_buffer.clear")
            await c.expect("input_audio_buffer.cleared")
            # what parsed as a JSON object is recorded, in order; the rest could not be
            assert [e["event_id"] for e in sim.client_events] == ["evt_beta_name", "evt_no_type", "evt_b64",
                                                                  "evt_1"]

    run(scenario())


# ------------------------------------------------------------------------------------------------ delivery


def test_delivery_options_change_timing_only() -> None:
    """Jitter, spikes and the first-delta delay reorder nothing and change no byte of audio or transcript."""

    async def one_turn(**options: Any) -> tuple[list[str], bytes, str]:
        async with simulator(**{**FAST, **options}) as sim, client(sim.url) as c:
            events = await ask(c)
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
            return [e["type"] for e in events], audio_of(events).tobytes(), text

    async def scenario() -> None:
        plain = await one_turn()
        jittery = await one_turn(jitter_ms=20.0, spike_ms=100.0, spike_every=3, first_delta_delay_ms=60.0, seed=7)
        assert jittery == plain
        assert len(plain[1]) == 2 * ms_to_samples(1000)

    run(scenario())


def test_tone_reply_is_at_tone_hz() -> None:
    """voice="tone": the reply's dominant frequency is tone_hz, so tests can find it in a recording."""

    async def scenario() -> None:
        async with simulator(**{**FAST, "tone_hz": 523.0}) as sim, client(sim.url) as c:
            audio = audio_of(await ask(c)).astype(np.float64)
            spectrum = np.abs(np.fft.rfft(audio))
            freqs = np.fft.rfftfreq(audio.size, 1 / 24000)
            assert freqs[int(np.argmax(spectrum))] == pytest.approx(523.0, abs=2.0)

    run(scenario())


def test_speech_reply_is_the_spoken_text() -> None:
    """voice="speech": the reply is the synthesised text (espeak-ng, or the voiced-tone fallback), not silence."""

    async def scenario() -> None:
        text = "The iron roof spans forty metres."
        async with simulator(voice="speech", reply_text=text, first_delta_delay_ms=0.0, speedup=100.0) as sim, \
                client(sim.url) as c:
            await c.send("response.create")
            events = await c.until("response.done")
            audio = audio_of(events)
            assert np.array_equal(audio, reply_audio("speech", text, 440.0, 2000))
            assert audio.size > ms_to_samples(500) and np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 300
            assert next(e for e in events if e["type"] == "response.output_audio_transcript.done")[
                "transcript"] == text

    run(scenario())


# ------------------------------------------------------------------------------------------------ lifetime


def test_session_lifetime_ends_with_session_expired_and_1001() -> None:
    async def scenario() -> None:
        async with simulator(session_lifetime_s=0.5) as sim, client(sim.url) as c:
            err = error_of(await c.recv())
            assert err["code"] == "session_expired"
            assert err["message"] == "Your session hit the maximum duration of 60 minutes."
            with pytest.raises(ConnectionClosed) as info:
                await c.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001

    run(scenario())


def test_lifetime_mid_reply_stops_the_stream() -> None:
    """The session ends while a reply streams: session_expired, close 1001, and the reply is cut short."""

    async def scenario() -> None:
        async with simulator(voice="tone", session_lifetime_s=0.5, first_delta_delay_ms=0.0, speedup=1.0,
                             reply_ms=5000) as sim, client(sim.url) as c:
            await c.send("response.create")
            events = await c.until("error")
            assert error_of(events[-1])["code"] == "session_expired"
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv()
            assert 0 < next(iter(sim.sent_audio_ms.values())) < 5000

    run(scenario())


# ------------------------------------------------------------------------------------------------ the rest


def test_records_span_connections() -> None:
    """A reconnect is a new session with a new conversation; the records keep both."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim:
            ids = []
            for _ in range(2):
                async with client(sim.url) as c:
                    ids.append(c.received[0]["session"]["id"])
                    await ask(c, question_ms=200)
            assert sim.connections == 2 and ids[0] != ids[1]
            assert [a.size for a in sim.committed_audio] == [ms_to_samples(200)] * 2
            assert len(sim.sent_audio_ms) == 2 and len(sim.request_headers) == 2

    run(scenario())


def test_serve_prints_its_address(capsys: pytest.CaptureFixture[str]) -> None:
    """serve() prints the one line with the real port, then answers on it until cancelled."""

    async def scenario() -> None:
        task = asyncio.create_task(serve(SimOptions(voice="tone"), "127.0.0.1", 0))
        line = ""
        while "listening" not in line:
            await asyncio.sleep(0.01)
            line += capsys.readouterr().out
        assert line.startswith("kioskd simulate: listening on ws://127.0.0.1:")
        url = line.split()[-1] + "?model=gpt-realtime"
        async with client(url) as c:
            assert c.received[0]["type"] == "session.created"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        SimOptions(faults=("no-such-fault",))
    with pytest.raises(ValueError):
        SimOptions(speedup=0)


def test_item_create_retrieve_delete() -> None:
    """The other GA item events: a created item chains on, can be retrieved and deleted; then it is gone.
    output_audio_buffer.clear is WebRTC/SIP only and is refused on a WebSocket."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            await c.send("conversation.item.create", item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Who built it?"}]})
            added = await c.expect("conversation.item.added")
            await c.expect("conversation.item.done")
            item_id = added["item"]["id"]
            assert added["previous_item_id"] is None and added["item"]["content"][0]["text"] == "Who built it?"
            await c.send("conversation.item.retrieve", item_id=item_id)
            assert (await c.expect("conversation.item.retrieved"))["item"]["id"] == item_id
            await c.send("conversation.item.delete", item_id=item_id)
            assert (await c.expect("conversation.item.deleted"))["item_id"] == item_id
            await c.send("conversation.item.retrieve", item_id=item_id)
            assert error_of(await c.recv())["code"] == "item_not_found"
            clear_id = await c.send("output_audio_buffer.clear")
            err = error_of(await c.recv())
            assert (err["code"], err["event_id"]) == ("invalid_event", clear_id)

    run(scenario())


def test_appends_reassemble_exactly() -> None:
    """Appends split anywhere on sample boundaries reassemble exactly."""

    async def scenario() -> None:
        async with simulator() as sim, client(sim.url) as c:
            question = tone(QUESTION_HZ, 300)
            for cut in np.array_split(question, 7):
                await c.send("input_audio_buffer.append", audio=pcm_to_b64(cut))
            await c.send("input_audio_buffer.commit")
            await c.expect("input_audio_buffer.committed")
            assert np.array_equal(sim.committed_audio[0], question)

    run(scenario())


def test_unused_simulator_closes_cleanly() -> None:
    async def scenario() -> None:
        sim = RealtimeSimulator(SimOptions(voice="tone"))
        await sim.start()
        assert sim.url == f"ws://127.0.0.1:{sim.port}/v1/realtime?model=gpt-realtime"
        await sim.close()

    run(scenario())


# ------------------------------------------------------------------------------------------------ function calls

LOOKUP_TOOL = {"type": "function", "name": "lookup_exhibit_knowledge", "description": "Look up a fact.",
               "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


async def declare(c: Client, tools: list[dict[str, Any]]) -> None:
    await c.send("session.update", session={"type": "realtime", "tools": tools, "tool_choice": "auto"})
    await c.expect("session.updated")


@pytest.mark.parametrize("preamble_ms", [0, 400])
def test_a_question_is_answered_with_a_call_then_grounded_in_its_output(preamble_ms: int) -> None:
    """With the tool declared: the first response says the preamble (if any) then ends with a completed
    function_call (arguments in deltas, validated against openai's types); the answer comes only after the
    output and a response.create, and speaks what the output said."""

    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge", preamble_ms=preamble_ms) as sim, \
                client(sim.url) as c:
            await configure(c)
            await declare(c, [LOOKUP_TOOL])
            events = await ask(c)
            done = events[-1]["response"]
            kinds = [item["type"] for item in done["output"]]
            assert kinds == (["message", "function_call"] if preamble_ms else ["function_call"])
            call = done["output"][-1]
            assert call["status"] == "completed" and call["name"] == "lookup_exhibit_knowledge"
            assert json.loads(call["arguments"]) == {"query": "How old is the mosaic?"}
            deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
            assert deltas == call["arguments"]
            assert audio_of(events).size == ms_to_samples(preamble_ms)
            assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"][-1] == \
                (1 if preamble_ms else 0)

            await c.send("conversation.item.create", item={"type": "function_call_output", "call_id": call["call_id"],
                                                           "output": '{"fact": "Laid around 320 AD."}'})
            await c.until("conversation.item.done")
            await c.send("response.create", response={})
            answer = await c.until("response.done")
            assert [i["type"] for i in answer[-1]["response"]["output"]] == ["message"]
            text = "".join(e["delta"] for e in answer if e["type"] == "response.output_audio_transcript.delta")
            assert "Laid around 320 AD." in text and audio_of(answer).size == ms_to_samples(1000)

    run(scenario())


def test_an_output_for_an_unknown_call_is_refused() -> None:
    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge") as sim, client(sim.url) as c:
            await configure(c)
            event_id = await c.send("conversation.item.create", item={
                "type": "function_call_output", "call_id": "call_nope", "output": "{}"})
            err = error_of(await c.expect("error"))
            assert err["param"] == "item.call_id" and err["event_id"] == event_id

    run(scenario())


def test_a_model_in_a_tool_loop_stops_when_the_follow_up_says_tool_choice_none() -> None:
    """tool_loop: every output earns another call, unless the response.create says tool_choice none."""

    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge", tool_loop=True) as sim, \
                client(sim.url) as c:
            await configure(c)
            await declare(c, [LOOKUP_TOOL])
            call = (await ask(c))[-1]["response"]["output"][-1]
            for choice in ("auto", "none"):
                await c.send("conversation.item.create", item={"type": "function_call_output",
                                                               "call_id": call["call_id"], "output": "{}"})
                await c.until("conversation.item.done")
                await c.send("response.create", response={"tool_choice": choice})
                output = (await c.until("response.done"))[-1]["response"]["output"]
                assert [i["type"] for i in output] == (["function_call"] if choice == "auto" else ["message"])
                call = output[-1]

    run(scenario())


def test_no_call_when_the_session_does_not_declare_the_tool() -> None:
    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge") as sim, client(sim.url) as c:
            await configure(c)
            output = (await ask(c))[-1]["response"]["output"]
            assert [i["type"] for i in output] == ["message"]

    run(scenario())


# ------------------------------------------------------------------------------------------------ G.711 µ-law input


def test_pcmu_input_is_decoded_at_8_khz_with_the_100_ms_minimum_in_bytes() -> None:
    """session.update with audio/pcmu input: appends are 8 kHz µ-law, one byte a sample; 50 ms (400 bytes) is
    refused as too small, 800 bytes commit; committed_audio holds the question at 24 kHz, its format recorded;
    output stays PCM 24 kHz and formats the simulator does not know are still refused."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, client(sim.url) as c:
            await configure(c)
            await c.send("session.update", session={"type": "realtime",
                                                    "audio": {"input": {"format": {"type": "audio/pcmu"}}}})
            s = (await c.expect("session.updated"))["session"]
            assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}

            question = soxr.resample(tone(QUESTION_HZ, 500), 24000, 8000)
            ulaw = ulaw_encode(question).tobytes()
            await c.send("input_audio_buffer.append", audio=base64.b64encode(ulaw[:400]).decode())
            commit_id = await c.send("input_audio_buffer.commit")
            err = error_of(await c.recv())
            assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == commit_id
            assert "only has 50.00ms of audio" in err["message"]
            for start in range(400, len(ulaw), 160):
                await c.send("input_audio_buffer.append", audio=base64.b64encode(ulaw[start:start + 160]).decode())
            await c.send("input_audio_buffer.commit")
            await c.expect("input_audio_buffer.committed")
            await c.expect("conversation.item.added")
            await c.expect("conversation.item.done")
            assert sim.committed_formats == ["audio/pcmu"]
            heard = sim.committed_audio[0]
            assert heard.size == ms_to_samples(500)
            ref = tone(QUESTION_HZ, 500).astype(np.float64)
            assert np.corrcoef(ref[1200:-1200], heard[1200:-1200].astype(np.float64))[0, 1] > 0.99

            for direction, fmt in [("input", {"type": "audio/pcma"}), ("input", {"type": "audio/pcm", "rate": 16000}),
                                   ("output", {"type": "audio/pcmu"})]:
                await c.send_raw(json.dumps({"type": "session.update", "event_id": "evt_fmt", "session": {
                    "type": "realtime", "audio": {direction: {"format": fmt}}}}))
                err = error_of(await c.recv())
                assert (err["code"], err["param"]) == ("invalid_value", f"session.audio.{direction}.format")

            await c.send("input_audio_buffer.append", audio=base64.b64encode(b"\xff" * 800).decode())
            await c.send("input_audio_buffer.commit")
            await c.expect("input_audio_buffer.committed")
            assert sim.committed_audio[1].size == ms_to_samples(100) and np.abs(sim.committed_audio[1]).max() <= 1

    run(scenario())
