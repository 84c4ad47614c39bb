"""The Chat Completions codec (core/chat.py): requests checked against the openai package's own types (message by
message and part by part: the SDK validates iterables lazily), chunks shaped as the reference records them and
checked the same way, and what the turn machine is told."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.chat import (MAX_LINE_BYTES, BadChunk, ChatConversation, ChatRequest, SseDecoder, wav)
from kioskd.core.pcm import ms_to_samples, pcm_to_b64
from kioskd.core.settings import ToolSpec

from tests.chat_schema import validate_chunk, validate_request

TOOL = ToolSpec("lookup_exhibit_knowledge", "Facts about the exhibit.",
                json.dumps({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}))
REQUEST = ChatRequest("gpt-audio-1.5", "marin", "You are the guide of the great hall.", (TOOL,), 400)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          choices: bool = True) -> dict[str, Any]:
    out = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, "model": "gpt-audio-1.5",
           "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else [],
           "usage": usage}
    validate_chunk(out)
    return out


def question(c: ChatConversation, ms: int = 2000) -> None:
    c.start_question()
    for _ in range(ms // 100):
        c.append(np.full(ms_to_samples(100), 300, np.int16))
    c.commit()


USAGE = {"prompt_tokens": 64, "completion_tokens": 50, "total_tokens": 114,
         "prompt_tokens_details": {"audio_tokens": 20, "cached_tokens": 0},
         "completion_tokens_details": {"audio_tokens": 40, "text_tokens": 10}}


def answer(c: ChatConversation, n: int = 1, text: str = "The hall was built in 1889.", ms: int = 600,
           tools: bool = True) -> tuple[list[ev.Input], dict[str, Any]]:
    reply, body = c.reply(REQUEST, f"r{n}", f"i{n}", tools=tools)
    out = reply.feed(chunk({"role": "assistant", "content": None, "refusal": None}))
    out += reply.feed(chunk({"audio": {"id": "audio_1", "transcript": text}}))
    for _ in range(ms // 200):
        out += reply.feed(chunk({"audio": {"id": "audio_1", "data": pcm_to_b64(np.ones(ms_to_samples(200),
                                                                                     np.int16))}}))
    out += reply.feed(chunk({"audio": {"id": "audio_1", "expires_at": 1767229200}}))
    out += reply.feed(chunk({}, finish="stop"))
    out += reply.feed(chunk(usage=USAGE, choices=False))
    return out + reply.finish(), body


def test_sse_framing_across_reads_line_ends_comments_and_multiline_data() -> None:
    dec = SseDecoder()
    stream = b': keep-alive\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: x\ndata:[DONE]\n\n'
    got: list[str] = []
    for i in range(len(stream)):  # one byte at a time: every split point
        got += dec.feed(stream[i:i + 1])
    assert got == ['{"a":\n1}', "[DONE]"]
    with pytest.raises(BadChunk, match="line over"):
        SseDecoder().feed(b"data: " + b"x" * MAX_LINE_BYTES)


def test_the_request_is_valid_and_carries_the_question_as_wav() -> None:
    c = ChatConversation()
    question(c, 2000)
    reply, body = c.reply(REQUEST, "r1", "i1")
    validate_request(body)
    assert (body["model"], body["modalities"], body["audio"]) == ("gpt-audio-1.5", ["text", "audio"],
                                                                  {"voice": "marin", "format": "pcm16"})
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 400 and body["tool_choice"] == "auto"
    assert body["tools"][0]["function"]["name"] == "lookup_exhibit_knowledge"
    system, user = body["messages"]
    assert system == {"role": "system", "content": REQUEST.instructions}
    part = user["content"][0]["input_audio"]
    assert part["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(part["data"]))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 24000, 48000)
    assert reply.question_ms == 2000


def test_a_streamed_reply_becomes_audio_then_its_end_with_the_usage_and_joins_the_conversation() -> None:
    c = ChatConversation()
    question(c)
    out, _ = answer(c)
    deltas = [i for i in out if isinstance(i, ev.AudioDelta)]
    assert len(deltas) == 3 and all(d.pcm.size == ms_to_samples(200) for d in deltas)
    assert out[-3:] == [ev.AudioDone("r1", "i1"), ev.ItemAdded("i1"), ev.ResponseDone("r1", "completed", None, USAGE)]
    question(c)
    _, body = c.reply(REQUEST, "r2", "i2")
    validate_request(body)
    assert body["messages"][1] == {"role": "assistant", "content": "The hall was built in 1889."}
    c.delete("i1")  # a new visitor: nothing of the last one is sent again
    _, body = c.reply(REQUEST, "r3", "i3")
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_a_tool_call_is_reported_then_its_output_goes_back_with_the_question() -> None:
    c = ChatConversation()
    question(c)
    reply, _ = c.reply(REQUEST, "r1", "i1")
    reply.feed(chunk({"role": "assistant", "content": None}))
    reply.feed(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "lookup_exhibit_knowledge", "arguments": ""}}]}))
    for part in ('{"que', 'ry": "roof"}'):
        reply.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
    out = reply.feed(chunk({}, finish="tool_calls")) + reply.finish()
    assert out[0] == ev.ToolCall("r1", "i1_call_0", "call_1", "lookup_exhibit_knowledge", '{"query": "roof"}')
    assert isinstance(out[1], ev.ResponseDone) and out[1].status == "completed" and out[1].usage is not None
    assert out[1].usage["estimated"] is True  # no usage chunk came: estimated, never free
    c.tool_output("call_1", '{"found": "iron"}')
    _, body = c.reply(REQUEST, "r2", "i2", tools=False)
    validate_request(body)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool"]
    assert body["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"query": "roof"}'
    assert body["tool_choice"] == "none"


def test_a_cut_reply_is_billed_from_what_was_sent_and_received() -> None:
    c = ChatConversation()
    question(c, 3000)
    reply, _ = c.reply(REQUEST, "r1", "i1")
    reply.feed(chunk({"audio": {"id": "a", "transcript": "The roof is iron and glass."}}))
    reply.feed(chunk({"audio": {"id": "a", "data": pcm_to_b64(np.ones(ms_to_samples(1000), np.int16))}}))
    out = reply.cut("cancelled")
    done = out[-1]
    assert isinstance(done, ev.ResponseDone) and done.status == "cancelled" and done.usage is not None
    assert done.usage["prompt_tokens_details"]["audio_tokens"] == 30  # 3 s at 10 tokens/s
    assert done.usage["completion_tokens_details"]["audio_tokens"] == 20  # 1 s at 20 tokens/s
    assert ev.ItemAdded("i1") in out  # what was said stays in the conversation, cut to what was heard:
    c.truncate("i1", 500)
    question(c)
    _, body = c.reply(REQUEST, "r2", "i2")
    assert body["messages"][1]["content"] == "The roof is…"
    assert reply.cut("failed", "again") == []  # one end per reply


def test_a_refused_request_is_not_billed() -> None:
    c = ChatConversation()
    question(c)
    reply, _ = c.reply(REQUEST, "r1", "i1")
    (done,) = reply.cut("failed", "HTTP 401 invalid_api_key", billed=False)
    assert done == ev.ResponseDone("r1", "failed", "HTTP 401 invalid_api_key", {})


@pytest.mark.parametrize("bad", [
    [], {"choices": "x"}, {"choices": [{"delta": "x"}]}, {"choices": [{"delta": {"audio": "x"}}]},
    {"choices": [{"delta": {"audio": {"data": "!!!"}}}]},
    {"choices": [{"delta": {"audio": {"data": "AAAA" * 40_000}}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": 99}]}}]},
])
def test_a_chunk_kioskd_cannot_use_is_a_bad_chunk(bad: Any) -> None:
    reply, _ = ChatConversation().reply(REQUEST, "r1", "i1")
    with pytest.raises(BadChunk):
        reply.feed(bad)


def test_wav_is_a_riff_container_of_the_samples() -> None:
    pcm = np.arange(-100, 100, dtype=np.int16)
    with wave.open(io.BytesIO(wav(pcm))) as w:
        assert np.array_equal(np.frombuffer(w.readframes(200), "<i2"), pcm)


def test_a_stream_that_ends_on_its_expiry_delta_without_a_finish_reason_is_complete() -> None:
    """The order captured in openai-node#1206: no finish_reason at all, then [DONE]."""
    c = ChatConversation()
    question(c)
    reply, _ = c.reply(REQUEST, "r1", "i1")
    reply.feed(chunk({"audio": {"id": "a", "transcript": "Hi.", "data": pcm_to_b64(np.ones(2400, np.int16))}}))
    reply.feed(chunk({"audio": {"id": "a", "expires_at": 1767229200}}))
    done = reply.finish()[-1]
    assert isinstance(done, ev.ResponseDone) and (done.status, done.reason) == ("completed", None)
    reply, _ = c.reply(REQUEST, "r2", "i2")
    reply.feed(chunk({}, finish="length"))
    assert reply.finish()[-1] == ev.ResponseDone("r2", "incomplete", "length", reply.estimate())


def test_a_truncate_that_comes_before_its_answer_is_kept_applies_when_it_is() -> None:
    """A barge-in: the executor truncates at once, while the cancelled stream has yet to end its reply."""
    c = ChatConversation()
    question(c)
    reply, _ = c.reply(REQUEST, "r1", "i1")
    reply.feed(chunk({"audio": {"id": "a", "transcript": "The roof is iron and glass, built in 1889."}}))
    reply.feed(chunk({"audio": {"id": "a", "data": pcm_to_b64(np.ones(ms_to_samples(1000), np.int16))}}))
    c.truncate("i1", 250)
    reply.cut("cancelled")
    question(c)
    _, body = c.reply(REQUEST, "r2", "i2")
    assert body["messages"][1]["content"] == "The roof…"


def test_chunks_without_a_delta_and_errors_inside_the_stream() -> None:
    """Azure's content-filter chunks have choices without a delta (or a null one): nothing to play, no failure.
    An error object inside the stream fails the reply with the service's words."""
    reply, _ = ChatConversation().reply(REQUEST, "r1", "i1")
    assert reply.feed({"choices": [{"index": 0, "content_filter_results": {}}]}) == []
    assert reply.feed({"choices": [{"index": 0, "delta": None, "finish_reason": "stop"}]}) == []
    assert reply.finish_reason == "stop"
    with pytest.raises(BadChunk, match="server_error: overloaded"):
        reply.feed({"error": {"code": "server_error", "message": "overloaded"}})


def test_sse_bounds_an_event_of_many_lines_and_shrugs_off_blank_line_floods() -> None:
    dec = SseDecoder()
    assert dec.feed(b"\n" * 1_000_000) == []
    with pytest.raises(BadChunk, match="event over"):
        for _ in range(20):
            dec.feed(b"data: " + b"x" * 100_000 + b"\n")
