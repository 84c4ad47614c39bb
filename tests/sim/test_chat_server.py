"""The Chat Completions audio simulator on real loopback HTTP, driven by httpx.

Every request the tests send is checked with ``tests.chat_schema.validate_request`` first (unless it is meant to be
refused), every chunk and answer received (and, at the end, every chunk and answer the simulator recorded) against
openai's models with no undeclared keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import time
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
import typing_extensions
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionDeveloperMessageParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionSystemMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from pydantic import ValidationError

from kioskd.core.pcm import b64_to_pcm, ms_to_samples, tone
from kioskd.sim.chat_server import (
    MESSAGE_KEYS,
    REQUEST_KEYS,
    ChatSimOptions,
    ChatSimulator,
    StreamRecord,
    serve,
)
from kioskd.sim.common import DEFAULT_REPLY_TEXT, TOOL_QUESTION
from tests.chat_schema import validate_chunk, validate_completion, validate_error, validate_request
from tests.conftest import UNIT_S, run, wait_until

KEY = "fake-chat-key-not-a-secret-0123456789"
#: a whole 1 s reply streams in well under a second: 10 chunks of 100 ms, 2 ms apart after 20 ms
FAST: dict[str, Any] = {"voice": "tone", "first_audio_delay_ms": 20.0, "speedup": 50.0, "reply_ms": 1000}
INSTRUCTIONS = "You are the voice of exhibit 12. Answer in two sentences."
LOOKUP_TOOL = {"type": "function", "function": {
    "name": "lookup_exhibit_knowledge", "description": "Look up a verified fact about the exhibit.",
    "parameters": {"type": "object", "properties": {"limit": {"type": "integer"}, "topic": {"type": "string"}},
                   "required": ["limit", "topic"], "additionalProperties": False}}}
AZURE_PATH = "/openai/deployments/kiosk-audio/chat/completions?api-version=2025-04-01-preview"


def wav_b64(ms: int, rate_hz: int = 24000, channels: int = 1, width: int = 2) -> str:
    """A question as base64 of a RIFF/WAV file: a 300 Hz tone of ``ms``."""
    pcm = tone(300.0, ms, rate_hz)
    frames = np.repeat(pcm, channels).tobytes() if width == 2 else bytes(pcm.size * channels)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate_hz)
        w.writeframes(frames)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def question(ms: int = 2000, rate_hz: int = 24000) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "input_audio",
                                         "input_audio": {"data": wav_b64(ms, rate_hz), "format": "wav"}}]}


def body(*messages: dict[str, Any], stream: bool = True, usage: bool = True, fmt: str = "pcm16",
         **extra: Any) -> dict[str, Any]:
    """The fallback backend's request (reference model-features §3.2): instructions, then the messages."""
    b: dict[str, Any] = {"model": "gpt-audio-1.5", "modalities": ["text", "audio"],
                         "audio": {"voice": "marin", "format": fmt},
                         "messages": [{"role": "system", "content": INSTRUCTIONS}, *(messages or [question()])]}
    if stream:
        b["stream"] = True
        b["stream_options"] = {"include_usage": usage}
    return {**b, **extra}


@contextlib.asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[ChatSimulator]:
    """A started simulator; on a clean exit every chunk and answer it recorded is validated."""
    async with ChatSimulator(ChatSimOptions(**options)) as sim:
        yield sim
    for chunk in sim.chunks:
        validate_chunk(chunk)
    for completion in sim.completions:
        validate_completion(completion)


@contextlib.asynccontextmanager
async def http(sim: ChatSimulator, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=10 * UNIT_S) as client:
        yield client


async def stream(client: httpx.AsyncClient, payload: dict[str, Any], url: str = "/chat/completions",
                 check: bool = True, **kwargs: Any) -> tuple[list[dict[str, Any]], bool]:
    """POST a streamed request; every chunk (validated) up to ``[DONE]``, and whether ``[DONE]`` came."""
    if check:
        validate_request(payload)
    chunks: list[dict[str, Any]] = []
    async with client.stream("POST", url, json=payload, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            if line == "data: [DONE]":
                return chunks, True
            chunks.append(json.loads(line.removeprefix("data: ")))
            validate_chunk(chunks[-1])
    return chunks, False


async def refused(client: httpx.AsyncClient, payload: Any, status: int = 400, url: str = "/chat/completions",
                  **kwargs: Any) -> dict[str, Any]:
    """POST a request the simulator must refuse; its (validated) error object."""
    response = await client.post(url, json=payload, **kwargs)
    assert response.status_code == status, response.text
    validate_error(response.json())
    error: dict[str, Any] = response.json()["error"]
    return error


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def audio_of(chunks: list[dict[str, Any]]) -> np.ndarray[Any, Any]:
    parts = [b64_to_pcm(d["audio"]["data"]) for d in deltas(chunks) if d.get("audio", {}).get("data")]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def transcript_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(d["audio"]["transcript"] for d in deltas(chunks) if d.get("audio", {}).get("transcript"))


def kind(delta: dict[str, Any]) -> str:
    """A delta's role in the sequence: role, transcript, data, expires, tool_calls, empty."""
    audio = delta.get("audio") or {}
    for name in ("data", "transcript", "expires_at"):
        if name in audio:
            return name
    if "tool_calls" in delta:
        return "tool_calls"
    return "role" if "role" in delta else "empty"


def collapse(kinds: list[str]) -> list[str]:
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


# ------------------------------------------------------------------------------------------------ streaming


def test_stream_follows_the_reference_chunk_sequence() -> None:
    """Role delta, transcript fragments, audio, expires_at, finish "stop", usage, [DONE] (reference §3.3); the
    audio is the whole reply and the fragments join to its text; every chunk shares one envelope."""

    async def scenario() -> None:
        async with simulator(**FAST, api_key=KEY) as sim, http(sim, KEY) as client:
            chunks, done = await stream(client, body())
            assert done
            assert collapse([kind(d) for d in deltas(chunks)]) == \
                ["role", "transcript", "data", "expires_at", "empty"]
            assert deltas(chunks)[0] == {"role": "assistant", "content": None, "refusal": None}
            assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 2) + ["stop"]
            assert audio_of(chunks).size == ms_to_samples(1000)
            assert transcript_of(chunks) == DEFAULT_REPLY_TEXT
            audio_ids = {d["audio"]["id"] for d in deltas(chunks) if "id" in d.get("audio", {})}
            assert len(audio_ids) == 1 and audio_ids.pop().startswith("audio_")
            assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
            assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
            assert {c["model"] for c in chunks} == {"gpt-audio-1.5"}
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
            assert all(c["usage"] is None for c in chunks[:-1])
            assert sim.chunks == chunks and len(sim.requests) == 1
            record = sim.streams[0]
            assert record == StreamRecord(path="/v1/chat/completions", status=200, id=chunks[0]["id"], stream=True,
                                          first_audio_s=record.first_audio_s, audio_ms=1000, completed=True)
            assert record.first_audio_s is not None and record.first_audio_s >= 0.02

    run(scenario())


def test_captured_shape_puts_the_role_on_the_first_audio_and_ends_on_expires_at() -> None:
    """stream_shape="captured" (openai-node#1206): transcript first, the role on the first audio data chunk, and
    no finish_reason anywhere: the expires_at-only chunk is the last before usage."""

    async def scenario() -> None:
        async with simulator(**FAST, stream_shape="captured") as sim, http(sim) as client:
            chunks, done = await stream(client, body())
            assert done
            assert collapse([kind(d) for d in deltas(chunks)]) == ["transcript", "data", "expires_at"]
            first_data = next(d for d in deltas(chunks) if kind(d) == "data")
            assert first_data["role"] == "assistant" and first_data["audio"]["id"].startswith("audio_")
            assert all(c["choices"][0].get("finish_reason") is None for c in chunks if c["choices"])
            assert "finish_reason" not in chunks[-2]["choices"][0]
            assert audio_of(chunks).size == ms_to_samples(1000) and transcript_of(chunks) == DEFAULT_REPLY_TEXT

    run(scenario())


def test_usage_follows_the_input_wav_duration() -> None:
    """A 2 s WAV is 20 input audio tokens at any rate; 1 s of reply is 20 output audio tokens; text is ~4 chars
    a token (instructions included); totals add up."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            for rate_hz in (24000, 16000):
                chunks, _ = await stream(client, body(question(2000, rate_hz)))
                usage = chunks[-1]["usage"]
                assert usage["prompt_tokens_details"] == {"audio_tokens": 20, "cached_tokens": 0,
                                                          "text_tokens": math.ceil(len(INSTRUCTIONS) / 4),
                                                          "image_tokens": 0}
                details = usage["completion_tokens_details"]
                assert details["audio_tokens"] == 20 and details["reasoning_tokens"] == 0
                assert details["text_tokens"] == math.ceil(len(DEFAULT_REPLY_TEXT) / 4)
                assert usage["prompt_tokens"] == 20 + math.ceil(len(INSTRUCTIONS) / 4)
                assert usage["completion_tokens"] == 20 + details["text_tokens"]
                assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    run(scenario())


def test_without_include_usage_there_is_no_usage_at_all() -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            chunks, done = await stream(client, body(usage=False))
            assert done and chunks[-1]["choices"][0]["finish_reason"] == "stop"
            assert not any("usage" in c for c in chunks)

    run(scenario())


def test_obfuscation_is_on_unless_turned_off() -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            chunks, _ = await stream(client, body())
            assert all(isinstance(c.get("obfuscation"), str) for c in chunks)
            quiet = body()
            quiet["stream_options"]["include_obfuscation"] = False
            chunks, _ = await stream(client, quiet)
            assert not any("obfuscation" in c for c in chunks)

    run(scenario())


# ------------------------------------------------------------------------------------------------ non-streaming


@pytest.mark.parametrize("fmt", ["wav", "pcm16"])
def test_without_stream_the_whole_reply_comes_at_once(fmt: str) -> None:
    """One chat.completion after the whole reply is generated: first_audio_delay + chunks × chunk_ms / speedup."""

    async def scenario() -> None:
        async with simulator(voice="tone", first_audio_delay_ms=20.0, speedup=10.0, reply_ms=1000) as sim, \
                http(sim) as client:
            payload = body(stream=False, fmt=fmt)
            validate_request(payload)
            response = await client.post("/chat/completions", json=payload)
            assert response.status_code == 200, response.text
            completion = validate_completion(response.json())
            choice = completion.choices[0]
            assert choice.finish_reason == "stop" and choice.message.role == "assistant"
            audio = choice.message.audio
            assert audio is not None and audio.transcript == DEFAULT_REPLY_TEXT and audio.id.startswith("audio_")
            assert audio.expires_at > time.time()
            raw = base64.b64decode(audio.data)
            if fmt == "wav":
                with wave.open(io.BytesIO(raw)) as w:
                    assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
                    assert w.getnframes() == ms_to_samples(1000)
            else:
                assert len(raw) == 2 * ms_to_samples(1000)
            assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
            assert completion.usage.prompt_tokens_details.audio_tokens == 20
            record = sim.streams[0]
            assert record.completed and not record.stream and record.audio_ms == 1000
            assert record.first_audio_s is not None and record.first_audio_s >= 0.02 + 10 * 100 / 10 / 1000

    run(scenario())


def test_a_later_request_can_reference_the_reply_audio_by_id() -> None:
    """An assistant message ``{"audio": {"id"}}`` (reference §3.2) is accepted and billed as input audio;
    an id the simulator never issued is refused."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            chunks, _ = await stream(client, body())
            audio_id = next(d["audio"]["id"] for d in deltas(chunks) if "id" in d.get("audio", {}))
            follow_up = body(question(), {"role": "assistant", "audio": {"id": audio_id}}, question(1000))
            usage = (await stream(client, follow_up))[0][-1]["usage"]
            assert usage["prompt_tokens_details"]["audio_tokens"] == 20 + 20 + 10
            unknown = body(question(), {"role": "assistant", "audio": {"id": "audio_nope"}}, question())
            error = await refused(client, unknown)
            assert error["param"] == "messages[2].audio.id"

    run(scenario())


# ------------------------------------------------------------------------------------------------ tools


def test_a_question_is_answered_with_a_call_then_grounded_in_the_tool_output() -> None:
    """tool_call: the declared function is called (id, name, then argument fragments, finish "tool_calls");
    the follow-up carrying the tool message is answered with audio that uses the output."""

    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge") as sim, http(sim) as client:
            chunks, done = await stream(client, body(tools=[LOOKUP_TOOL]))
            assert done and audio_of(chunks).size == 0
            calls = [tc for d in deltas(chunks) for tc in d.get("tool_calls", [])]
            head = calls[0]
            assert head["id"].startswith("call_") and head["type"] == "function"
            assert head["function"] == {"name": "lookup_exhibit_knowledge", "arguments": ""}
            arguments = "".join(tc["function"].get("arguments", "") for tc in calls)
            assert json.loads(arguments) == {"topic": TOOL_QUESTION}  # the first required string parameter
            assert len(calls) > 2 and {tc["index"] for tc in calls} == {0}
            assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
            assert chunks[-1]["usage"]["completion_tokens_details"]["audio_tokens"] == 0
            assert sim.streams[0].tool_call and sim.streams[0].first_audio_s is None

            call = {"role": "assistant", "content": None, "tool_calls": [
                {"id": head["id"], "type": "function",
                 "function": {"name": "lookup_exhibit_knowledge", "arguments": arguments}}]}
            answer = {"role": "tool", "tool_call_id": head["id"], "content": '{"fact": "Laid around 320 AD."}'}
            chunks, done = await stream(client, body(question(), call, answer, tools=[LOOKUP_TOOL]))
            assert done and audio_of(chunks).size == ms_to_samples(1000)
            assert "Laid around 320 AD." in transcript_of(chunks)
            assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

            await refused(client, body(question(), call, tools=[LOOKUP_TOOL]))  # the call is never answered

    run(scenario())


def test_no_call_without_the_tool_or_with_tool_choice_none() -> None:
    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge") as sim, http(sim) as client:
            for payload in (body(), body(tools=[LOOKUP_TOOL], tool_choice="none")):
                chunks, _ = await stream(client, payload)
                assert audio_of(chunks).size == ms_to_samples(1000)
                assert not any("tool_calls" in d for d in deltas(chunks))

    run(scenario())


def test_a_non_streamed_call() -> None:
    async def scenario() -> None:
        async with simulator(**FAST, tool_call="lookup_exhibit_knowledge",
                             tool_arguments='{"topic": "mosaic", "limit": 1}') as sim, http(sim) as client:
            response = await client.post("/chat/completions", json=body(stream=False, tools=[LOOKUP_TOOL]))
            completion = validate_completion(response.json())
            choice = completion.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.audio is None
            assert choice.message.tool_calls is not None
            call = choice.message.tool_calls[0]
            assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.id.startswith("call_")
            assert json.loads(call.function.arguments) == {"topic": "mosaic", "limit": 1}

    run(scenario())


# ------------------------------------------------------------------------------------------------ refusals


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the request: ``path`` (dotted, with list indexes) set to ``value`` (or deleted if None)."""

    def mutate(b: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = b
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


@pytest.mark.parametrize("mutate, param, code", [
    (_set("messages.1.content.0.input_audio.format", "pcm16"), "messages[1].content[0].input_audio.format",
     "invalid_value"),
    (_set("messages.1.content.0.input_audio.data", base64.b64encode(b"\0" * 4800).decode()),
     "messages[1].content[0].input_audio.data", "invalid_value"),
    (_set("messages.1.content.0.input_audio.data", wav_b64(500, channels=2)),
     "messages[1].content[0].input_audio.data", "invalid_value"),
    (_set("messages.1.content.0.input_audio.data", "%%not base64%%"), "messages[1].content[0].input_audio.data",
     "invalid_value"),
    (_set("model", None), "model", "missing_required_parameter"),
    (_set("messages", []), "messages", "empty_array"),
    (_set("audio.format", "wav"), "audio.format", "unsupported_value"),
    (_set("audio", None), "audio", "missing_required_parameter"),
    (_set("modalities", ["text"]), "modalities", "invalid_value"),
    (_set("temperature_typo", 0.5), "temperature_typo", "unknown_parameter"),
    (_set("messages.0.role", "function"), "messages[0].role", "invalid_value"),
    (_set("messages.0.voice", "marin"), "messages[0].voice", "unknown_parameter"),
    (_set("messages.1", {"role": "tool", "content": "{}"}), "messages[1].tool_call_id",
     "missing_required_parameter"),
    (_set("messages.1", {"role": "tool", "tool_call_id": "call_1", "content": "{}"}), "messages[1].role", None),
])
def test_bad_requests_are_400_naming_the_param(mutate: Callable[[dict[str, Any]], None], param: str,
                                               code: str | None) -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            payload = body()
            mutate(payload)
            error = await refused(client, payload)
            assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
            assert sim.streams[0].status == 400 and len(sim.requests) == 1 and not sim.chunks

    run(scenario())


def test_the_schema_validator_refuses_what_the_simulator_refuses() -> None:
    """tests.chat_schema is strict where the TypedDicts are not: pcm16 input, unknown keys at any depth."""
    for mutate in (_set("messages.1.content.0.input_audio.format", "pcm16"),):
        payload = body()
        mutate(payload)
        with pytest.raises(ValidationError):
            validate_request(payload)
    for mutate in (_set("temperature_typo", 0.5), _set("messages.0.voice", "marin"),
                   _set("messages.1.content.0.input_audio.rate", 24000), _set("stream_options.usage", True)):
        payload = body()
        mutate(payload)
        with pytest.raises(AssertionError, match="undeclared keys"):
            validate_request(payload)


def test_the_simulator_knows_the_keys_openai_declares() -> None:
    """REQUEST_KEYS and MESSAGE_KEYS are openai's own (a newer SDK adding one shows up here)."""
    hints = CompletionCreateParamsStreaming.__required_keys__ | CompletionCreateParamsStreaming.__optional_keys__
    assert REQUEST_KEYS == hints
    for role, params in {"system": ChatCompletionSystemMessageParam, "developer": ChatCompletionDeveloperMessageParam,
                         "user": ChatCompletionUserMessageParam, "assistant": ChatCompletionAssistantMessageParam,
                         "tool": ChatCompletionToolMessageParam}.items():
        assert MESSAGE_KEYS[role] == set(typing_extensions.get_type_hints(params)), role


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"api-key": KEY}])
def test_a_wrong_or_missing_key_is_401(headers: dict[str, str]) -> None:
    """OpenAI's path takes only Bearer auth: Azure's api-key header is no key there."""

    async def scenario() -> None:
        async with simulator(**FAST, api_key=KEY) as sim, http(sim) as client:
            error = await refused(client, body(), 401, headers=headers)
            assert error["code"] == "invalid_api_key" and KEY not in json.dumps(error)
            assert sim.requests == []

    run(scenario())


def test_azure_paths_take_the_api_key_header() -> None:
    """The deployment path needs api-version and takes the model from the deployment; /openai/v1 too."""

    async def scenario() -> None:
        async with simulator(**FAST, api_key=KEY) as sim, \
                httpx.AsyncClient(base_url=sim.base, headers={"api-key": KEY}, timeout=10 * UNIT_S) as client:
            no_model = body()
            del no_model["model"]
            chunks, done = await stream(client, no_model, AZURE_PATH, check=False)
            assert done and {c["model"] for c in chunks} == {"kiosk-audio"}
            chunks, done = await stream(client, body(), "/openai/v1/chat/completions")
            assert done and audio_of(chunks).size == ms_to_samples(1000)
            error = await refused(client, body(), url=AZURE_PATH.split("?")[0])
            assert error["param"] == "api-version"
            await refused(client, no_model, url="/openai/v1/chat/completions")  # no deployment: model required
            assert [s.path for s in sim.streams][:2] == ["/openai/deployments/kiosk-audio/chat/completions",
                                                         "/openai/v1/chat/completions"]

    run(scenario())


def test_a_body_over_the_cap_is_413_and_bad_json_is_400() -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            huge = body(question(), {"role": "user", "content": "x" * (25 * 2**20)})
            response = await client.post("/chat/completions", content=json.dumps(huge).encode(),
                                         headers={"Content-Type": "application/json"})
            assert response.status_code == 413
            validate_error(response.json())
            response = await client.post("/chat/completions", content=b"{not json",
                                         headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and validate_error(response.json()).type == "invalid_request_error"
            assert sim.requests == []

    run(scenario())


# ------------------------------------------------------------------------------------------------ disconnects, faults


def test_a_client_that_leaves_mid_stream_stops_generation() -> None:
    """The client reads two audio chunks and hangs up: the record says cancelled, and no chunk follows."""

    async def scenario() -> None:
        async with simulator(voice="tone", first_audio_delay_ms=10.0, chunk_ms=100, speedup=4.0,
                             reply_ms=3000) as sim, http(sim) as client:
            seen = 0
            async with client.stream("POST", "/chat/completions", json=body()) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"data"' in line:
                        seen += 1
                    if seen == 2:
                        break
            record = sim.streams[0]
            await wait_until(lambda: record.cancelled, "the stream recorded as cancelled")
            sent = len(sim.chunks)
            await asyncio.sleep(0.1)
            assert len(sim.chunks) == sent and not record.completed
            assert 200 <= record.audio_ms < 3000 and record.status == 200

    run(scenario())


def test_a_client_that_leaves_before_a_non_streamed_answer_is_cancelled() -> None:
    async def scenario() -> None:
        async with simulator(voice="tone", first_audio_delay_ms=2000.0) as sim, http(sim) as client:
            with pytest.raises(httpx.TimeoutException):
                await client.post("/chat/completions", json=body(stream=False), timeout=0.1)
            await wait_until(lambda: sim.streams[0].cancelled, "the request recorded as cancelled")
            assert sim.completions == [] and not sim.streams[0].completed

    run(scenario())


def test_status_faults_answer_the_next_request_once() -> None:
    async def scenario() -> None:
        async with simulator(**FAST, retry_after_ms=250) as sim, http(sim) as client:
            sim.arm_fault("status_500")
            error = await refused(client, body(), 500)
            assert error["type"] == "server_error"
            sim.arm_fault("status_429")
            response = await client.post("/chat/completions", json=body())
            assert response.status_code == 429
            assert response.headers["retry-after-ms"] == "250" and response.headers["retry-after"] == "1"
            assert validate_error(response.json()).code == "rate_limit_exceeded"
            _, done = await stream(client, body())
            assert done and sim.faults_fired == ["status_500", "status_429"]
            assert [s.status for s in sim.streams] == [500, 429, 200]

    run(scenario())


@pytest.mark.parametrize("fault, error, left", [("drop_mid_stream", httpx.RemoteProtocolError, False),
                                                ("stall_mid_stream", httpx.ReadTimeout, True)])
def test_mid_stream_faults_strike_after_two_audio_chunks(fault: str, error: type[Exception], left: bool) -> None:
    """drop: the TCP connection is cut mid-body; stall: nothing more comes, the connection stays open until the
    client gives up, which is recorded as the client leaving. Either way only once: the next stream is whole."""

    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            sim.arm_fault(fault)
            with pytest.raises(error):
                await stream(client, body(), timeout=httpx.Timeout(10 * UNIT_S, read=0.2))
            record = sim.streams[0]
            await wait_until(lambda: record.cancelled == left, "the stream's end recorded")
            assert record.fault == fault and record.audio_ms == 200 and not record.completed
            _, done = await stream(client, body())
            assert done and sim.faults_fired == [fault]

    run(scenario())


def test_no_usage_ends_with_done_but_no_usage_chunk() -> None:
    async def scenario() -> None:
        async with simulator(**FAST) as sim, http(sim) as client:
            sim.arm_fault("no_usage")
            chunks, done = await stream(client, body())
            assert done and all(c["usage"] is None for c in chunks) and chunks[-1]["choices"]
            assert sim.streams[0].fault == "no_usage" and sim.streams[0].completed
            with pytest.raises(ValueError):
                sim.arm_fault("no_such_fault")

    run(scenario())


# ------------------------------------------------------------------------------------------------ lifecycle


def test_close_cuts_a_stream_in_flight() -> None:
    async def scenario() -> None:
        sim = ChatSimulator(ChatSimOptions(voice="tone", first_audio_delay_ms=5000.0))
        await sim.start()
        async with http(sim) as client:
            task = asyncio.create_task(stream(client, body()))
            await wait_until(lambda: bool(sim.streams) and sim.streams[0].status == 200, "the stream to start")
            started = time.monotonic()
            await sim.close()
            assert time.monotonic() - started < 2 * UNIT_S
            with pytest.raises(httpx.TransportError):
                await task
            assert not sim.streams[0].cancelled and not sim.streams[0].completed

    run(scenario())


def test_serve_prints_its_address(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(serve(ChatSimOptions(**FAST), "127.0.0.1", 0))
        await wait_until(lambda: "listening" in capsys.readouterr().out or task.done(), "the listening line")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run(scenario())


def test_options_are_checked() -> None:
    for bad in ({"speedup": 0}, {"chunk_ms": 0}, {"jitter_ms": -1}, {"tool_arguments": "[1]"}):
        with pytest.raises(ValueError):
            ChatSimOptions(**bad)
