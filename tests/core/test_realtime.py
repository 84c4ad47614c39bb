"""The GA codec: server frames → typed inputs, and the client event builders, checked against openai's models."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.pcm import b64_to_pcm, tone
from kioskd.core.realtime import ACKNOWLEDGED, MAX_DELTA_MS, RealtimeEncoder, parse_server_event
from kioskd.core.settings import ToolSpec
from tests.realtime_schema import validate_client, validate_server

# ------------------------------------------------------------------------------------------------ reference frames
# From shared/reference/realtime.md (§5.2, §7, §9.1, §9.2, §10, §11, §2), verbatim.

AUDIO_DELTA = ('{"event_id":"event_4950","type":"response.output_audio.delta","response_id":"resp_001",'
               '"item_id":"msg_008","output_index":0,"content_index":0,"delta":"AAABAAIA"}')
RESPONSE_DONE_CANCELLED = (
    '{"type":"response.done","event_id":"event_3301","response":{"id":"resp_001","object":"realtime.response",'
    '"status":"cancelled","status_details":{"type":"cancelled","reason":"client_cancelled"},"usage":'
    '{"total_tokens":253,"input_tokens":132,"output_tokens":121,"input_token_details":{"text_tokens":119,'
    '"audio_tokens":13,"image_tokens":0,"cached_tokens":64,"cached_tokens_details":{"text_tokens":64,'
    '"audio_tokens":0,"image_tokens":0}},"output_token_details":{"text_tokens":30,"audio_tokens":91}}}}'
)
ERROR_INVALID_EVENT = (
    '{"event_id":"event_890","type":"error","error":{"type":"invalid_request_error","code":"invalid_event",'
    '"message":"The \'type\' field is missing.","param":null,"event_id":"event_567"}}'
)
ERROR_COMMIT_EMPTY = (
    '{"type":"error","event_id":"event_B1","error":{"type":"invalid_request_error","code":'
    '"input_audio_buffer_commit_empty","message":"Error committing input audio buffer: buffer too small. '
    'Expected at least 100ms of audio, but buffer only has 0.00ms of audio.","param":null,"event_id":"evt_c3"}}'
)
ERROR_BETA_DISABLED = (  # recorded without a top-level event_id
    '{"type":"error","error":{"type":"invalid_request_error","code":"beta_api_shape_disabled","message":'
    '"The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.","param":null}}'
)
ITEM_TRUNCATED = ('{"type":"conversation.item.truncated","event_id":"event_2301","item_id":"item_002",'
                  '"content_index":0,"audio_end_ms":1500}')
RATE_LIMITS = ('{"event_id":"event_5758","type":"rate_limits.updated","rate_limits":[{"name":"requests",'
               '"limit":1000,"remaining":999,"reset_seconds":60},{"name":"tokens","limit":50000,'
               '"remaining":49950,"reset_seconds":60}]}')

#: a GA session.created in the shape of the spec example (the server's defaults, server_vad on)
SESSION_CREATED: dict[str, Any] = {
    "type": "session.created", "event_id": "event_C9G5RJeJ2gF77mV7f2B1j",
    "session": {
        "type": "realtime", "object": "realtime.session", "id": "sess_C9G5QPteg4UIbotdKLoYQ",
        "model": "gpt-realtime-2025-08-28", "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10.", "tools": [], "tool_choice": "auto",
        "max_output_tokens": "inf", "tracing": None, "prompt": None, "expires_at": 1756324625,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                      "noise_reduction": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 200, "idle_timeout_ms": None,
                                         "create_response": True, "interrupt_response": True}},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
        "include": None,
    },
}


def frame(d: dict[str, Any]) -> str:
    return json.dumps(d)


# ------------------------------------------------------------------------------------------------ server frames


def test_session_created() -> None:
    """session.created → SessionCreated with the session id and expires_at (the adapter fills expires_in_s)."""
    inp = parse_server_event(frame(SESSION_CREATED))
    assert inp == ev.SessionCreated("sess_C9G5QPteg4UIbotdKLoYQ", 1756324625.0, None)


def test_session_created_validates() -> None:
    """The session.created fixture is a valid GA server event (so the parser is tested on a real shape)."""
    validate_server(SESSION_CREATED)


def test_session_created_without_expiry() -> None:
    """session.created without expires_at (or with 0) → expires_at_s None: no recycle timer."""
    d = json.loads(frame(SESSION_CREATED))
    del d["session"]["expires_at"]
    assert parse_server_event(frame(d)) == ev.SessionCreated("sess_C9G5QPteg4UIbotdKLoYQ", None)
    d["session"]["expires_at"] = 0
    assert parse_server_event(frame(d)) == ev.SessionCreated("sess_C9G5QPteg4UIbotdKLoYQ", None)


def test_session_updated_reads_turn_detection() -> None:
    """session.updated → SessionUpdated carrying audio.input.turn_detection (None when push-to-talk took)."""
    d = json.loads(frame(SESSION_CREATED))
    d["type"] = "session.updated"
    assert parse_server_event(frame(d)) == ev.SessionUpdated(
        turn_detection=SESSION_CREATED["session"]["audio"]["input"]["turn_detection"])
    d["session"]["audio"]["input"]["turn_detection"] = None
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.SessionUpdated(turn_detection=None)


def test_audio_delta() -> None:
    """response.output_audio.delta → AudioDelta with ids and decoded PCM16 LE samples."""
    validate_server(json.loads(AUDIO_DELTA))
    inp = parse_server_event(AUDIO_DELTA)
    assert isinstance(inp, ev.AudioDelta)
    assert (inp.response_id, inp.item_id) == ("resp_001", "msg_008")
    assert inp.pcm.dtype == np.int16 and inp.pcm.tolist() == [0, 1, 2]


def test_audio_delta_of_real_audio_round_trips() -> None:
    """A delta carrying 100 ms of a tone decodes to exactly those samples."""
    pcm = tone(440, 100)
    d = json.loads(AUDIO_DELTA)
    d["delta"] = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
    inp = parse_server_event(frame(d))
    assert isinstance(inp, ev.AudioDelta) and np.array_equal(inp.pcm, pcm)


def test_audio_done() -> None:
    """response.output_audio.done → AudioDone(response_id, item_id)."""
    d = json.loads(AUDIO_DELTA)
    d["type"] = "response.output_audio.done"
    del d["delta"]
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.AudioDone("resp_001", "msg_008")


def test_transcript_done() -> None:
    """response.output_audio_transcript.done → TranscriptDone with the transcript."""
    d = {"type": "response.output_audio_transcript.done", "event_id": "event_1", "response_id": "resp_001",
         "item_id": "msg_008", "output_index": 0, "content_index": 0, "transcript": "Built in 1889."}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.TranscriptDone("resp_001", "msg_008", "Built in 1889.")


def test_response_created() -> None:
    """response.created → ResponseCreated(response.id)."""
    d = {"type": "response.created", "event_id": "event_2", "response": {
        "id": "resp_001", "object": "realtime.response", "status": "in_progress", "status_details": None,
        "output": [], "conversation_id": "conv_1", "output_modalities": ["audio"], "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}},
        "usage": None, "metadata": None}}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.ResponseCreated("resp_001")


def test_response_done_cancelled_with_usage() -> None:
    """response.done (cancelled, with usage) → ResponseDone with status, reason and the usage dict."""
    validate_server(json.loads(RESPONSE_DONE_CANCELLED))
    inp = parse_server_event(RESPONSE_DONE_CANCELLED)
    assert isinstance(inp, ev.ResponseDone)
    assert (inp.response_id, inp.status, inp.reason) == ("resp_001", "cancelled", "client_cancelled")
    assert inp.usage is not None and inp.usage["total_tokens"] == 253
    assert inp.usage["output_token_details"] == {"text_tokens": 30, "audio_tokens": 91}


def test_response_done_completed_without_details() -> None:
    """response.done completed with null status_details and no usage → reason None, usage None."""
    d = {"type": "response.done", "event_id": "e", "response": {"id": "resp_2", "object": "realtime.response",
                                                              "status": "completed", "status_details": None}}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.ResponseDone("resp_2", "completed", None, None)


FUNCTION_CALL_DONE: dict[str, Any] = {
    "type": "response.output_item.done", "event_id": "event_7", "response_id": "resp_001", "output_index": 1,
    "item": {"id": "item_fc1", "object": "realtime.item", "type": "function_call", "status": "completed",
             "call_id": "call_001", "name": "lookup_exhibit_knowledge", "arguments": '{"query": "age"}'}}


def test_a_completed_function_call_item_is_a_tool_call() -> None:
    validate_server(FUNCTION_CALL_DONE)
    assert parse_server_event(frame(FUNCTION_CALL_DONE)) == ev.ToolCall(
        "resp_001", "item_fc1", "call_001", "lookup_exhibit_knowledge", '{"query": "age"}')


def test_a_function_call_cut_short_is_a_tool_call_not_to_run() -> None:
    """A call left incomplete by a cancel or a cap still needs an answer, but is never run."""
    d = json.loads(json.dumps(FUNCTION_CALL_DONE))
    d["item"]["status"] = "incomplete"
    validate_server(d)
    inp = parse_server_event(frame(d))
    assert isinstance(inp, ev.ToolCall) and inp.complete is False and inp.call_id == "call_001"


def test_other_finished_items_change_nothing() -> None:
    d = json.loads(json.dumps(FUNCTION_CALL_DONE))
    d["item"] = {"id": "msg_1", "object": "realtime.item", "type": "message", "role": "assistant",
                 "status": "completed", "content": []}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.ServerEvent("response.output_item.done")


def test_an_item_added_names_the_item() -> None:
    """conversation.item.added (and the docs' older conversation.item.created) → ItemAdded(item.id)."""
    d = {"type": "conversation.item.added", "event_id": "event_9", "previous_item_id": None,
         "item": {"id": "item_q1", "object": "realtime.item", "type": "message", "role": "user",
                  "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.ItemAdded("item_q1")
    d["type"] = "conversation.item.created"
    assert parse_server_event(frame(d)) == ev.ItemAdded("item_q1")


def test_input_committed() -> None:
    """input_audio_buffer.committed → InputCommitted(item_id)."""
    d = {"type": "input_audio_buffer.committed", "event_id": "e", "previous_item_id": None, "item_id": "item_u1"}
    validate_server(d)
    assert parse_server_event(frame(d)) == ev.InputCommitted("item_u1")


def test_item_truncated() -> None:
    """conversation.item.truncated → ItemTruncated(item_id, audio_end_ms)."""
    validate_server(json.loads(ITEM_TRUNCATED))
    assert parse_server_event(ITEM_TRUNCATED) == ev.ItemTruncated("item_002", 1500)


@pytest.mark.parametrize(("text", "expected"), [
    (ERROR_INVALID_EVENT, ev.ServerError("invalid_event", "The 'type' field is missing.", "invalid_request_error",
                                         "event_567")),
    (ERROR_COMMIT_EMPTY, ev.ServerError(
        "input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer too small. Expected at "
        "least 100ms of audio, but buffer only has 0.00ms of audio.", "invalid_request_error", "evt_c3")),
    (ERROR_BETA_DISABLED, ev.ServerError(
        "beta_api_shape_disabled", "The Realtime Beta API is no longer supported. Please use /v1/realtime for the "
        "GA API.", "invalid_request_error", None)),
], ids=["invalid_event", "commit_empty", "beta_disabled_no_event_id"])
def test_error_frames(text: str, expected: ev.ServerError) -> None:
    """error frames → ServerError(code, message, type, client event_id), including one without event_id."""
    assert parse_server_event(text) == expected


@pytest.mark.parametrize("text", [ERROR_INVALID_EVENT, ERROR_COMMIT_EMPTY])
def test_complete_error_frames_validate(text: str) -> None:
    """The complete reference error frames are valid GA server events."""
    validate_server(json.loads(text))


def test_error_frame_without_event_id_fails_strict_validation() -> None:
    """The recorded beta_api_shape_disabled frame lacks event_id: strict validation rejects it, the parser does not."""
    with pytest.raises(Exception):
        validate_server(json.loads(ERROR_BETA_DISABLED))


@pytest.mark.parametrize("body", [{}, {"error": None}, {"error": "boom"}, {"error": {"code": 5, "message": None}}])
def test_error_frames_are_parsed_leniently(body: dict[str, Any]) -> None:
    """A degenerate error frame is still a ServerError (never a BadEvent): the session stays up."""
    inp = parse_server_event(frame({"type": "error", **body}))
    assert isinstance(inp, ev.ServerError)
    assert inp.code is None and inp.message


@pytest.mark.parametrize("kind", sorted(ACKNOWLEDGED))
def test_acknowledged_types_are_server_events(kind: str) -> None:
    """Every known acknowledgement type → ServerEvent(type): counted, changes nothing."""
    assert parse_server_event(frame({"type": kind, "event_id": "e"})) == ev.ServerEvent(kind)


def test_rate_limits_updated() -> None:
    """The reference rate_limits.updated frame validates and parses to ServerEvent."""
    validate_server(json.loads(RATE_LIMITS))
    assert parse_server_event(RATE_LIMITS) == ev.ServerEvent("rate_limits.updated")


@pytest.mark.parametrize("kind", ["response.audio.delta", "response.audio_transcript.delta",
                                  "transcription_session.created", "response.mcp_call.in_progress", "x.y.z"])
def test_unknown_types_become_unknown(kind: str) -> None:
    """Types kioskd does not know (beta names included) → Unknown(type), never an error."""
    assert parse_server_event(frame({"type": kind, "event_id": "e", "delta": "AAAA"})) == ev.Unknown(kind)


# ------------------------------------------------------------------------------------------------ bad frames


@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'error'}"],
                         ids=["empty", "truncated", "text", "single-quotes"])
def test_malformed_json_is_a_bad_event(text: str) -> None:
    """Malformed JSON → BadEvent not_json, the parser's complaint as the detail; parsing never raises."""
    inp = parse_server_event(text)
    assert isinstance(inp, ev.BadEvent)
    assert (inp.event_type, inp.reason) == ("(unparsed)", "not_json") and inp.detail


@pytest.mark.parametrize("text", ["[]", "42", '"session.created"', "null", '{"event_id": "e"}', '{"type": 5}'],
                         ids=["array", "number", "string", "null", "no-type", "non-string-type"])
def test_non_object_or_typeless_is_a_bad_event(text: str) -> None:
    """A JSON value that is not an object with a string type → BadEvent."""
    inp = parse_server_event(text)
    assert isinstance(inp, ev.BadEvent) and inp.reason == "not_an_event"


@pytest.mark.parametrize("data", [ITEM_TRUNCATED.encode(), b"\xff\xfe\x00garbage", b""],
                         ids=["json-event", "bad-utf8", "empty"])
def test_binary_frames_are_bad_events_never_decoded(data: bytes) -> None:
    """Server events are JSON text frames: a binary frame is a bad event, even one whose bytes are an event."""
    assert parse_server_event(data) == ev.BadEvent("(binary)", "binary", f"a binary frame of {len(data)} bytes")


def _without(text: str, *path: str) -> str:
    d = json.loads(text)
    obj = d
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]
    return frame(d)


@pytest.mark.parametrize(("text", "field"), [
    (_without(AUDIO_DELTA, "delta"), "delta"),
    (_without(AUDIO_DELTA, "response_id"), "response_id"),
    (_without(AUDIO_DELTA, "item_id"), "item_id"),
    (_without(RESPONSE_DONE_CANCELLED, "response", "id"), "response.id"),
    (_without(RESPONSE_DONE_CANCELLED, "response", "status"), "response.status"),
    (_without(RESPONSE_DONE_CANCELLED, "response"), "response"),
    (_without(ITEM_TRUNCATED, "item_id"), "item_id"),
    (_without(ITEM_TRUNCATED, "audio_end_ms"), "audio_end_ms"),
    (frame({"type": "session.created", "event_id": "e", "session": {"type": "realtime"}}), "session.id"),
    (frame({"type": "session.updated", "event_id": "e"}), "session"),
    (frame({"type": "response.created", "event_id": "e", "response": {}}), "response.id"),
    (frame({"type": "input_audio_buffer.committed", "event_id": "e"}), "item_id"),
])
def test_missing_field_is_a_bad_event(text: str, field: str) -> None:
    """A known event without a field kioskd needs → BadEvent(type, missing_field, naming the field)."""
    inp = parse_server_event(text)
    assert isinstance(inp, ev.BadEvent), inp
    assert (inp.event_type, inp.reason) == (json.loads(text)["type"], "missing_field")
    assert field.split(".")[-1] in inp.detail


@pytest.mark.parametrize(("d", "kind"), [
    ({"response_id": 7, "item_id": "i", "delta": "AAAAAA=="}, "response.output_audio.delta"),
    ({"response_id": "r", "item_id": "i", "delta": 12}, "response.output_audio.delta"),
    ({"item_id": "i", "content_index": 0, "audio_end_ms": "soon"}, "conversation.item.truncated"),
    ({"item_id": "i", "content_index": 0, "audio_end_ms": None}, "conversation.item.truncated"),
    ({"response": {"id": "r", "status": None}}, "response.done"),
])
def test_wrong_field_types_are_bad_events(d: dict[str, Any], kind: str) -> None:
    """Fields of the wrong type → BadEvent, never an exception."""
    inp = parse_server_event(frame({"type": kind, "event_id": "e", **d}))
    assert isinstance(inp, ev.BadEvent), inp
    assert inp.event_type == kind and inp.reason in ("missing_field", "bad_field")


@pytest.mark.parametrize(("delta", "why"), [("AAA", "base64"), ("A@==", "base64"), ("AAAA", "bytes")],
                         ids=["truncated-base64", "bad-alphabet", "odd-byte-count"])
def test_bad_audio_is_a_bad_event(delta: str, why: str) -> None:
    """Undecodable base64 or an odd byte count (3 bytes) in a delta → BadEvent with the reason."""
    d = json.loads(AUDIO_DELTA)
    d["delta"] = delta
    inp = parse_server_event(frame(d))
    assert isinstance(inp, ev.BadEvent)
    assert (inp.event_type, inp.reason) == ("response.output_audio.delta", "bad_audio")
    assert why in inp.detail


def _delta_of(samples: int) -> str:
    d = json.loads(AUDIO_DELTA)
    d["delta"] = base64.b64encode(bytes(samples * 2)).decode()
    return frame(d)


def test_a_delta_of_more_audio_than_the_cap_is_a_bad_event_not_audio() -> None:
    """MAX_DELTA_MS of audio in one delta plays; one sample more is BadEvent too_much_audio, judged before the
    audio is decoded (15 MB of audio in one delta, five minutes, never becomes an array)."""
    most = MAX_DELTA_MS * 24
    assert isinstance(parse_server_event(_delta_of(most)), ev.AudioDelta)
    over = parse_server_event(_delta_of(most + 1))
    assert isinstance(over, ev.BadEvent)
    assert (over.event_type, over.reason) == ("response.output_audio.delta", "too_much_audio")
    huge = parse_server_event(_delta_of(15 * 10**6 // 2))
    assert isinstance(huge, ev.BadEvent) and huge.reason == "too_much_audio" and "312500 ms" in huge.detail


def test_infinite_number_is_a_bad_event() -> None:
    """conversation.item.truncated with audio_end_ms 1e400 (parsed as inf) → BadEvent, not an exception."""
    d = ITEM_TRUNCATED.replace('"audio_end_ms":1500', '"audio_end_ms":1e400')
    assert isinstance(parse_server_event(d), ev.BadEvent)


def test_deeply_nested_json_is_a_bad_event() -> None:
    """A frame nested 100 000 deep (100 KB, under the 256 KiB frame limit) → BadEvent, not RecursionError."""
    assert isinstance(parse_server_event("[" * 100_000), ev.BadEvent)


# ------------------------------------------------------------------------------------------------ client events


def all_intents() -> dict[str, ev.Intent]:
    return {
        "configure": ev.ConfigureSession("cfg_1", "marin", "You are the voice of exhibit 12."),
        "append": ev.AppendAudio(tone(440, 20)),
        "append_empty": ev.AppendAudio(np.zeros(0, np.int16)),
        "commit": ev.Commit(),
        "start_question": ev.StartQuestion(),
        "request_reply": ev.RequestReply("req_1"),
        "request_reply_no_tools": ev.RequestReply("req_2", tools=False),
        "configure_guide": ev.ConfigureSession("cfg_2", "marin", "You are the guide.", (LOOKUP,), 4000, 600),
        "configure_pcmu": ev.ConfigureSession("cfg_3", "marin", "Hi.", input_format="pcmu"),
        "cancel": ev.CancelReply("resp_001"),
        "cancel_no_id": ev.CancelReply(None),
        "truncate": ev.Truncate("item_002", 1500),
        "tool_output": ev.ReturnToolOutput("call_7", '{"opening_hours": "10-18"}'),
        "delete_item": ev.DeleteItem("item_003"),
    }


LOOKUP = ToolSpec("lookup_exhibit_knowledge", "Look up a fact about the exhibit.",
                  '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}')


def encode_one(intent: ev.Intent, encoder: RealtimeEncoder | None = None) -> dict[str, Any]:
    (event,) = (encoder or RealtimeEncoder()).encode(intent)
    return event


def test_every_intention_is_encoded() -> None:
    """The encoder knows every intention the core can emit (a new one without an encoding fails here)."""
    assert set(type(i) for i in all_intents().values()) | {ev.ClearOutput} == set(ev.INTENTS)


@pytest.mark.parametrize("name", list(all_intents().keys()))
def test_every_encoding_validates_as_a_ga_client_event(name: str) -> None:
    """Each intention encodes to one valid GA client event with no extra fields, and survives JSON."""
    validate_client(json.loads(json.dumps(encode_one(all_intents()[name]))))


def test_encoded_payloads() -> None:
    """Encodings carry exactly the fields the reference shows: types, ids, base64 audio, truncate fields."""
    e = {name: encode_one(intent) for name, intent in all_intents().items()}
    assert e["commit"].keys() == {"type", "event_id"} and e["commit"]["type"] == "input_audio_buffer.commit"
    assert e["start_question"]["type"] == "input_audio_buffer.clear"
    assert e["request_reply"] == {"type": "response.create", "event_id": "req_1"}
    assert e["cancel"] == {"type": "response.cancel", "event_id": e["cancel"]["event_id"], "response_id": "resp_001"}
    assert "response_id" not in e["cancel_no_id"]
    t = e["truncate"]
    assert (t["type"], t["item_id"], t["content_index"], t["audio_end_ms"]) == (
        "conversation.item.truncate", "item_002", 0, 1500)
    assert np.array_equal(b64_to_pcm(e["append"]["audio"]), tone(440, 20))
    assert e["append"]["type"] == "input_audio_buffer.append"
    assert e["tool_output"]["item"] == {"type": "function_call_output", "call_id": "call_7",
                                        "output": '{"opening_hours": "10-18"}'}
    assert (e["delete_item"]["type"], e["delete_item"]["item_id"]) == ("conversation.item.delete", "item_003")
    assert e["request_reply_no_tools"] == {"type": "response.create", "event_id": "req_2",
                                           "response": {"tool_choice": "none"}}
    guide = e["configure_guide"]["session"]
    assert guide["tools"] == [{"type": "function", "name": "lookup_exhibit_knowledge",
                               "description": "Look up a fact about the exhibit.",
                               "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                              "required": ["query"]}}]
    assert guide["tool_choice"] == "auto" and guide["max_output_tokens"] == 600
    assert guide["truncation"] == {"type": "retention_ratio", "retention_ratio": 0.5,
                                   "token_limits": {"post_instructions": 4000}}
    assert e["configure"]["session"]["tools"] == [] and "truncation" not in e["configure"]["session"]
    assert "max_output_tokens" not in e["configure"]["session"]


def test_clear_output_is_nothing_over_a_websocket() -> None:
    """ClearOutput (output_audio_buffer.clear is WebRTC/SIP only) encodes to no event on the WebSocket."""
    assert RealtimeEncoder().encode(ev.ClearOutput()) == []


def test_session_update_is_ga_push_to_talk() -> None:
    """session.update: type realtime, audio only, PCM 24 kHz in and out, turn_detection null, voice, instructions;
    its event_id is the intention's ref, so a refusal names it."""
    event = encode_one(ev.ConfigureSession("cfg_9", "cedar", "Be brief."))
    assert event["event_id"] == "cfg_9"
    s = event["session"]
    assert s["type"] == "realtime"
    assert s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert "turn_detection" in s["audio"]["input"] and s["audio"]["input"]["turn_detection"] is None
    assert s["audio"]["output"]["voice"] == "cedar"
    assert s["instructions"] == "Be brief."
    beta_keys = {"voice", "modalities", "input_audio_format", "output_audio_format", "turn_detection",
                 "temperature", "input_audio_transcription", "max_response_output_tokens"}
    assert not beta_keys & s.keys()


def test_session_updates_do_not_share_format_dicts() -> None:
    """Two session.updates do not alias one mutable format dict (a caller editing one cannot change the next)."""
    encoder = RealtimeEncoder()
    a = encode_one(ev.ConfigureSession("cfg_1", "marin", ""), encoder)
    a["session"]["audio"]["input"]["format"]["rate"] = 16000
    b = encode_one(ev.ConfigureSession("cfg_2", "marin", ""), encoder)
    assert b["session"]["audio"]["input"]["format"]["rate"] == 24000
    assert b["session"]["audio"]["output"]["format"]["rate"] == 24000


def test_event_ids_are_unique_and_short() -> None:
    """Every client event gets its own event_id (≤ 512 chars), so a server error can name it."""
    encoder = RealtimeEncoder()
    unref = [i for i in all_intents().values() if not isinstance(i, (ev.ConfigureSession, ev.RequestReply))]
    ids = [encode_one(i, encoder)["event_id"] for _ in range(50) for i in unref]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and 0 < len(i) <= 512 for i in ids)
    assert not {"cfg_1", "req_1"} & set(ids)  # never collides with the core's refs


def test_parsed_error_names_the_request() -> None:
    """An error echoing a request's event_id parses back to the core's ref."""
    create = encode_one(ev.RequestReply("req_4"))
    d = json.loads(ERROR_COMMIT_EMPTY)
    d["error"]["event_id"] = create["event_id"]
    inp = parse_server_event(frame(d))
    assert isinstance(inp, ev.ServerError) and inp.event_id == "req_4"
