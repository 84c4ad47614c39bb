"""A local stand-in for OpenAI's Chat Completions API with audio (``gpt-audio-1.5``) on a real HTTP socket.

The fallback backend answers through Chat Completions when the Realtime API is down; the network cannot reach
OpenAI, so this is how the daemon's fallback is exercised. Written from the reference
(shared/reference/model-features.md §2.4, §3, §5), never from kioskd's client code (``kioskd.core.chat`` and the
adapters are not imported), so one typo cannot pass on both sides.

What it does: ``POST /v1/chat/completions`` (``Authorization: Bearer``), Azure's
``/openai/deployments/{deployment}/chat/completions?api-version=…`` and ``/openai/v1/chat/completions`` (``api-key``
or Bearer); the request checked as the service checks it (unknown arguments, messages and roles, tool-call pairing,
``input_audio`` as WAV or MP3 only, streamed output as ``pcm16`` only) with OpenAI-shaped 400/401/413 errors; one
answer per request, streamed as Server-Sent Events on a configurable schedule (time to first audio, speed-up,
seeded jitter) or, without ``stream``, as one ``chat.completion`` after the whole reply is generated; usage with
plausible token counts (§2.2: 10 tokens a second of input audio, 20 of output audio, one per 4 characters of text).
Function calls: with ``ChatSimOptions.tool_call`` naming a tool the request declares, a fresh question (the last
message is the user's) is answered with a call; the request that carries the ``role: "tool"`` answer gets audio.
What it does not: text-only output, output formats other than pcm16 (stream) and wav/pcm16 (no stream), images
and files, ``n`` > 1, ``max_completion_tokens`` cut-offs, Azure's content-filter annotations.

Everything a test inspects is appended to public lists on ``ChatSimulator``, across all requests. All of it runs
on the event loop that called ``start()``; read the records from that loop, or after ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import random
import re
import secrets
import time
import wave
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from aiohttp import web

from kioskd.core.pcm import API_RATE_HZ, Pcm, ms_to_samples, pcm_to_b64, samples_to_ms
from kioskd.sim.common import DEFAULT_REPLY_TEXT, TOOL_QUESTION, Json, SimServer, serve_until_cancelled
from kioskd.sim.voice import Voice, reply_audio
from kioskd.sim.web import port_of, serve_app

OPENAI_PATH: Final = "/v1/chat/completions"
AZURE_V1_PATH: Final = "/openai/v1/chat/completions"
AZURE_DEPLOYMENT_PATH: Final = "/openai/deployments/{deployment}/chat/completions"
DEFAULT_MODEL: Final = "gpt-audio-1.5"
#: the models ``GET /v1/models/{model}`` knows (any other: 404 ``model_not_found``)
MODELS: Final = ("gpt-audio-1.5", "gpt-audio", "gpt-audio-mini")
#: the largest request body read (a minute of 24 kHz WAV is ~3.8 MB of base64); larger: 413
MAX_BODY_BYTES: Final = 25 * 2**20
#: how long a reply's audio can be referenced by id in a later request (its ``expires_at``)
AUDIO_LIFETIME_S: Final = 3600
#: tokens a second of audio (reference §2.2: not documented for Chat Completions; the Realtime rates)
INPUT_AUDIO_TOKENS_PER_S: Final = 10
OUTPUT_AUDIO_TOKENS_PER_S: Final = 20
#: an MP3 upload's duration is estimated from its size at this bit rate (the simulator decodes no MP3)
MP3_ESTIMATE_BPS: Final = 128_000
#: one-shot faults armed at run time with ``arm_fault``: "status_500" / "status_429" answer the next request with
#: that status and an OpenAI error body (429 with ``retry-after``); "drop_mid_stream" cuts the TCP connection after
#: two audio chunks of the next streamed spoken reply; "stall_mid_stream" goes quiet after two audio chunks of the
#: next streamed spoken reply, keeping the connection open until the client leaves; "no_usage" ends the next stream
#: that asked for usage with ``[DONE]`` but no usage chunk (the SDK warns an interrupted stream may lack it)
ONE_SHOT_FAULTS: Final[frozenset[str]] = frozenset({"status_500", "status_429", "drop_mid_stream",
                                                    "stall_mid_stream", "no_usage"})

# The request arguments openai's ``CompletionCreateParams`` declares (openai 3.57); any other is "Unrecognized".
REQUEST_KEYS: Final = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options"})
# The keys each message role may carry (openai's ``ChatCompletion*MessageParam``); "function" is retired.
MESSAGE_KEYS: Final[dict[str, frozenset[str]]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "audio", "content", "function_call", "name", "refusal", "tool_calls"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
}
# The content parts each role may send, with their keys; the simulator reads no images or files.
_PART_KEYS: Final[dict[str, frozenset[str]]] = {
    "text": frozenset({"type", "text", "prompt_cache_breakpoint"}),
    "input_audio": frozenset({"type", "input_audio", "prompt_cache_breakpoint"}),
    "refusal": frozenset({"type", "refusal"}),
}
_ROLE_PARTS: Final[dict[str, tuple[str, ...]]] = {
    "system": ("text",), "developer": ("text",), "tool": ("text",), "user": ("text", "input_audio"),
    "assistant": ("text", "refusal"),
}
VOICES: Final = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"})
#: output formats openai's ``ChatCompletionAudioParam`` names, and the ones the simulator can encode
AUDIO_FORMATS: Final = ("wav", "aac", "mp3", "flac", "opus", "pcm16")
_ENCODED_FORMATS: Final = ("wav", "pcm16")
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}

StreamShape = Literal["reference", "captured"]


@dataclass(frozen=True)
class ChatSimOptions:
    """How the simulated endpoint behaves. Times in ms unless named otherwise.

    Audio chunk k of a reply is due ``first_audio_delay_ms + k * chunk_ms / speedup`` after the request arrived,
    plus its own extra delay (uniform in [0, jitter_ms], seeded); a delayed chunk holds back the ones behind it.
    A non-streamed reply is answered once its last chunk would have been due.
    """

    api_key: str | None = None
    """The key every request must carry; None: no auth checked."""
    first_audio_delay_ms: float = 600.0
    chunk_ms: int = 100
    speedup: float = 1.0
    jitter_ms: float = 0.0
    voice: Voice = "speech"
    tone_hz: float = 440.0
    reply_ms: int = 2000
    """The reply's length with ``voice="tone"`` (speech lasts as long as ``reply_text`` takes to say)."""
    reply_text: str = DEFAULT_REPLY_TEXT
    tool_call: str | None = None
    """When a request declares a function tool of this name and its last message is the user's, the answer is a
    call to it (``finish_reason: "tool_calls"``); the request that carries the tool's answer gets audio."""
    tool_arguments: str | None = None
    """The call's arguments; None: ``{"<first required string parameter>": TOOL_QUESTION}`` from the tool's
    declared schema (``query`` when it declares none)."""
    stream_shape: StreamShape = "reference"
    """``reference``: the chunk order of model-features §3.3 (role delta first, transcript fragments, audio, an
    ``expires_at``-only delta, then an empty delta with ``finish_reason: "stop"``). ``captured``: the order of
    the stream captured in openai-node#1206: transcript fragments first, the role riding on the first audio chunk,
    and the stream ending on the ``expires_at``-only delta with no ``finish_reason`` at all."""
    retry_after_ms: int = 1000
    """What a "status_429" fault asks the client to wait (``retry-after-ms``, and ``retry-after`` in seconds)."""
    seed: int = 1

    def __post_init__(self) -> None:
        if self.chunk_ms <= 0 or self.speedup <= 0 or self.reply_ms <= 0:
            raise ValueError("chunk_ms, speedup and reply_ms must be positive")
        if min(self.first_audio_delay_ms, self.jitter_ms, self.retry_after_ms) < 0:
            raise ValueError("delays, jitter and retry_after_ms cannot be negative")
        if self.tool_arguments is not None and not isinstance(json.loads(self.tool_arguments), dict):
            raise ValueError("tool_arguments must be a JSON object")


@dataclass
class StreamRecord:
    """What became of one HTTP request: its status, and for an answer its timing and how much audio went out."""

    path: str
    status: int = 0
    id: str | None = None
    """The answer's ``chatcmpl-…`` id (None for a refused request)."""
    stream: bool = False
    tool_call: bool = False
    first_audio_s: float | None = None
    """Server time from the request arriving to its first audio chunk written (non-streamed: to the whole answer
    being handed over): the server's share of the client's time to first sound."""
    audio_ms: int = 0
    cancelled: bool = False
    """The client went away before the end; generation stopped there."""
    completed: bool = False
    """The answer went out whole (a stream up to ``[DONE]``)."""
    fault: str | None = None


class _ApiError(Exception):
    """A request the endpoint refuses: one JSON error answer with this status."""

    def __init__(self, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers = status, body, headers or {}


def error_body(code: str | None, message: str, param: str | None = None,
               kind: str = "invalid_request_error") -> Json:
    """The service's error envelope (openai's ``ErrorObject`` under ``error``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _bad(param: str | None, message: str, code: str | None = "invalid_value") -> _ApiError:
    return _ApiError(400, error_body(code, message, param))


def _missing(param: str) -> _ApiError:
    return _bad(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


@dataclass
class _Plan:
    """A checked request and what the simulated model answers it with."""

    model: str
    stream: bool
    include_usage: bool
    obfuscation: bool
    audio_format: str
    text: str
    call: tuple[str, str] | None  # (name, arguments) when the answer is a function call
    prompt_text_tokens: int
    prompt_audio_tokens: int


class ChatSimulator(SimServer):
    """The simulated endpoint. ``start()`` listens; each request is answered on its own, statelessly (only reply
    audio ids are remembered, for assistant messages that reference them)."""

    def __init__(self, options: ChatSimOptions = ChatSimOptions()) -> None:
        super().__init__(ONE_SHOT_FAULTS)
        self.options = options
        self.requests: list[Json] = []  # every JSON request body parsed, as sent
        self.chunks: list[Json] = []  # every chunk streamed, in the order written (all streams)
        self.completions: list[Json] = []  # every non-streamed chat.completion answered
        self.streams: list[StreamRecord] = []  # one per HTTP request on a chat completions path
        self.model_lookups: list[str] = []  # GET /v1/models/{model}, in order
        self.request_headers: list[dict[str, str]] = []  # index for index with streams
        self.rng = random.Random(options.seed)
        self.reply_pcm: Pcm = np.zeros(0, dtype=np.int16)
        self._audio: dict[str, int] = {}  # reply audio id -> its output audio tokens, for later references
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._live: set[asyncio.Transport] = set()  # connections with a request being answered
        self._closing = False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Synthesise the reply, then listen. ``port`` 0 picks a free port (read it back from ``port``)."""
        o = self.options
        self.reply_pcm = await asyncio.to_thread(reply_audio, o.voice, o.reply_text, o.tone_hz, o.reply_ms)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        for path in (OPENAI_PATH, AZURE_V1_PATH, AZURE_DEPLOYMENT_PATH):
            app.router.add_post(path, self._handle)
        app.router.add_get("/v1/models/{model}", self._model)
        # handler_cancellation: a client that goes away cancels its handler at once (generation stops there)
        self._host = host
        self._runner = await serve_app(app, host, port, handler_cancellation=True)

    @property
    def port(self) -> int:
        return port_of(self._runner)

    @property
    def base(self) -> str:
        """``http://HOST:PORT``: an Azure client's endpoint."""
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL: a client POSTs ``{url}/chat/completions``."""
        return f"{self.base}/v1"

    async def close(self) -> None:
        """Stop listening; answers in flight are cut (their connections aborted)."""
        if self._runner is None:
            return
        self._closing = True
        for transport in list(self._live):
            transport.abort()
        await self._runner.cleanup()
        self._runner = None

    # ------------------------------------------------------------------------------------------- one request

    async def _model(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models/{model}``: the Model object (no shutdown date), or 404 ``model_not_found``."""
        model = request.match_info["model"]
        self.model_lookups.append(model)
        if model not in MODELS:
            return web.json_response(error_body("model_not_found", f"The model '{model}' does not exist or you do "
                                                "not have access to it."), status=404)
        return web.json_response({"id": model, "object": "model", "created": 1756339200, "owned_by": "system",
                                  "shutdown_date": None})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started_s = asyncio.get_running_loop().time()
        record = StreamRecord(path=request.path)
        self.streams.append(record)
        self.request_headers.append({name.lower(): value for name, value in request.headers.items()})
        transport = request.transport
        if transport is not None:
            self._live.add(transport)
        try:
            return await self._answer(request, record, started_s)
        except _ApiError as exc:
            record.status = exc.status
            return web.json_response(exc.body, status=exc.status, headers=exc.headers)
        except asyncio.CancelledError:
            # the client left (aiohttp cancels the handler), unless the simulator is closing or cut it itself
            record.cancelled = not self._closing and record.fault != "drop_mid_stream"
            raise
        finally:
            if transport is not None:
                self._live.discard(transport)

    async def _answer(self, request: web.Request, record: StreamRecord, started_s: float) -> web.StreamResponse:
        deployment = request.match_info.get("deployment")
        self._authorize(request, azure=request.path.startswith("/openai/"))
        if deployment is not None and "api-version" not in request.query:
            raise _missing("api-version")
        body = await self._read_json(request)
        self.requests.append(body)
        if self.take_fault("status_500"):
            record.fault = "status_500"
            raise _ApiError(500, error_body(None, "The server had an error while processing your request. Sorry "
                                            "about that!", kind="server_error"))
        if self.take_fault("status_429"):
            record.fault = "status_429"
            ms = self.options.retry_after_ms
            raise _ApiError(429, error_body("rate_limit_exceeded", f"Rate limit reached for requests. Please try "
                                            f"again in {ms}ms.", kind="requests"),
                            {"retry-after": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)})
        plan = self._check(body, deployment)
        record.id, record.stream, record.tool_call = self.new_id("chatcmpl", "-"), plan.stream, plan.call is not None
        if plan.stream:
            return await self._stream(request, plan, record, started_s)
        return await self._complete(plan, record, started_s)

    def _authorize(self, request: web.Request, azure: bool) -> None:
        """OpenAI takes ``Authorization: Bearer``; Azure's paths take its ``api-key`` header as well."""
        key = self.options.api_key
        if key is None:
            return
        bearer, api_key = request.headers.get("Authorization"), request.headers.get("api-key")
        if bearer == f"Bearer {key}" or (azure and api_key == key):
            return
        if bearer is None and (api_key is None or not azure):
            message = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                       "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        else:
            message = "Incorrect API key provided."  # the service echoes part of the key: not worth a leak here
        raise _ApiError(401, error_body("invalid_api_key", message))

    async def _read_json(self, request: web.Request) -> Json:
        too_large = _ApiError(413, error_body("request_too_large", f"The request body is larger than the "
                                              f"{MAX_BODY_BYTES} bytes allowed.", kind="invalid_request_error"))
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise too_large
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise _bad(None, "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
                       "object as the body.", None)
        return body

    # ------------------------------------------------------------------------------------------- checks

    def _check(self, body: Json, deployment: str | None) -> _Plan:
        """The request checked as the service checks it, then what the simulated model does with it."""
        for key in body:
            if key not in REQUEST_KEYS:
                raise _bad(key, f"Unrecognized request argument supplied: {key}", "unknown_parameter")
        model = body.get("model", deployment)
        if model is None:
            raise _missing("model")
        if not isinstance(model, str) or not model:
            raise _bad("model", f"Invalid value for 'model': {model!r}.")
        stream = _optional(body, "stream", bool, False)
        if body.get("n") not in (None, 1):
            raise _bad("n", "The simulator answers with one choice: 'n' must be 1.", "unsupported_value")
        options = body.get("stream_options")
        if options is not None and not stream:
            raise _bad("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        options = _object(body, "stream_options", frozenset({"include_usage", "include_obfuscation"}))
        include_usage = _optional(options, "include_usage", bool, False, "stream_options.")
        obfuscation = _optional(options, "include_obfuscation", bool, True, "stream_options.")
        audio_format = self._check_audio(body, stream)
        tools = self._check_tools(body)
        messages = body.get("messages")
        if messages is None:
            raise _missing("messages")
        if not isinstance(messages, list):
            raise _bad("messages", "Invalid type for 'messages': expected an array of messages.", "invalid_type")
        if not messages:
            raise _bad("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
                       "got an empty array instead.", "empty_array")
        text_chars, audio_tokens, outputs = self._check_messages(messages)
        text_chars += len(json.dumps(tools)) if tools else 0
        plan = _Plan(model=model, stream=stream, include_usage=include_usage, obfuscation=obfuscation,
                     audio_format=audio_format, text=self.options.reply_text, call=None,
                     prompt_text_tokens=math.ceil(text_chars / 4), prompt_audio_tokens=audio_tokens)
        name, last_role = self.options.tool_call, messages[-1]["role"]
        declared = {t["function"]["name"]: t for t in tools}
        if name in declared and last_role == "user" and body.get("tool_choice", "auto") != "none":
            plan.call = (declared[name]["function"]["name"], self.options.tool_arguments or _arguments(declared[name]))
        elif last_role == "tool":
            plan.text = f"According to the exhibit: {' '.join(outputs)}"[:500]
        return plan

    def _check_audio(self, body: Json, stream: bool) -> str:
        """``modalities`` and ``audio``: the simulator only speaks, so audio output is required."""
        modalities = body.get("modalities")
        if modalities is None:
            raise _bad("modalities", "The simulator only answers with audio: set 'modalities' to ['text', 'audio'].",
                       "missing_required_parameter")
        if not isinstance(modalities, list) or any(m not in ("text", "audio") for m in modalities):
            raise _bad("modalities", f"Invalid value for 'modalities': {modalities!r}. Supported values are: 'text' "
                       "and 'audio'.")
        if "audio" not in modalities:
            raise _bad("modalities", "The simulator only answers with audio: 'modalities' must include 'audio'.")
        if "audio" not in body:
            raise _missing("audio")
        audio = _object(body, "audio", frozenset({"voice", "format"}))
        voice, fmt = audio.get("voice"), audio.get("format")
        if voice is None:
            raise _missing("audio.voice")
        if not (voice in VOICES or (isinstance(voice, dict) and set(voice) == {"id"} and isinstance(voice["id"], str))):
            raise _bad("audio.voice", f"Invalid value: {voice!r}. Supported values are: "
                       + ", ".join(f"'{v}'" for v in sorted(VOICES)) + ", or {'id': 'voice_…'}.")
        if fmt is None:
            raise _missing("audio.format")
        if fmt not in AUDIO_FORMATS:
            raise _bad("audio.format", f"Invalid value: {fmt!r}. Supported values are: "
                       + ", ".join(f"'{f}'" for f in AUDIO_FORMATS) + ".")
        if stream and fmt != "pcm16":
            raise _bad("audio.format", f"Unsupported value: 'audio.format' does not support {fmt!r} with "
                       "stream=true. Supported values are: 'pcm16'.", "unsupported_value")
        if fmt not in _ENCODED_FORMATS:
            raise _bad("audio.format", f"The simulator encodes only 'wav' and 'pcm16', not {fmt!r}.",
                       "unsupported_value")
        return str(fmt)

    def _check_tools(self, body: Json) -> list[Json]:
        tools = body.get("tools")
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise _bad("tools", "Invalid type for 'tools': expected an array of tools.", "invalid_type")
        for i, tool in enumerate(tools):
            param = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise _bad(f"{param}.type", "The simulator takes only function tools: 'type' must be 'function'.")
            for key in tool:
                if key not in ("type", "function"):
                    raise _bad(f"{param}.{key}", f"Unknown parameter: '{param}.{key}'.", "unknown_parameter")
            function = _object(tool, "function", frozenset({"name", "description", "parameters", "strict"}),
                               f"{param}.")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise _missing(f"{param}.function.name")
        return tools

    def _check_messages(self, messages: list[Any]) -> tuple[int, int, list[str]]:
        """Every message's role, keys and content, and the tool-call pairing; returns the characters of text,
        the input audio tokens, and the tool outputs answering the latest calls."""
        text_chars = audio_tokens = 0
        pending: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made the call
        outputs: list[str] = []
        for i, message in enumerate(messages):
            param = f"messages[{i}]"
            if not isinstance(message, dict):
                raise _bad(param, f"Invalid type for '{param}': expected an object.", "invalid_type")
            role = message.get("role")
            if role is None:
                raise _missing(f"{param}.role")
            if role not in MESSAGE_KEYS:
                raise _bad(f"{param}.role", f"Invalid value: {role!r}. Supported values are: "
                           + ", ".join(f"'{r}'" for r in MESSAGE_KEYS) + ".")
            for key in message:
                if key not in MESSAGE_KEYS[role]:
                    raise _bad(f"{param}.{key}", f"Unknown parameter: '{param}.{key}'.", "unknown_parameter")
            if pending and role != "tool":
                raise _unanswered(pending)
            chars, tokens = self._check_content(message, role, param)
            text_chars, audio_tokens = text_chars + chars, audio_tokens + tokens
            if role == "assistant":
                outputs = []
                for call_id, arguments in _tool_calls(message, param):
                    pending[call_id] = i
                    text_chars += len(arguments)
            elif role == "tool":
                answered = message.get("tool_call_id")
                if answered is None:
                    raise _missing(f"{param}.tool_call_id")
                if answered not in pending:
                    raise _bad(f"{param}.role", "Invalid parameter: messages with role 'tool' must be a response to a "
                               "preceding message with 'tool_calls'.", None)
                del pending[answered]
                outputs.append(_text_of(message.get("content")))
        if pending:
            raise _unanswered(pending)
        return text_chars, audio_tokens, outputs

    def _check_content(self, message: Json, role: str, param: str) -> tuple[int, int]:
        """A message's ``content`` (and an assistant's ``audio`` reference): its text characters and audio tokens."""
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise _missing(f"{param}.content")
            content = ""
        chars = tokens = 0
        if isinstance(content, str):
            chars = len(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                c, t = self._check_part(part, role, f"{param}.content[{j}]")
                chars, tokens = chars + c, tokens + t
        else:
            raise _bad(f"{param}.content", f"Invalid type for '{param}.content': expected a string or an array of "
                       "content parts.", "invalid_type")
        if role == "assistant" and message.get("audio") is not None:
            audio = _object(message, "audio", frozenset({"id"}), f"{param}.")
            if audio.get("id") not in self._audio:
                raise _bad(f"{param}.audio.id", f"Audio with id {audio.get('id')!r} not found (unknown or expired).")
            tokens += self._audio[audio["id"]]
        return chars, tokens

    def _check_part(self, part: Any, role: str, param: str) -> tuple[int, int]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _ROLE_PARTS[role]:
            raise _bad(f"{param}.type", f"Invalid value: {kind!r}. Supported values are: "
                       + ", ".join(f"'{k}'" for k in _ROLE_PARTS[role]) + ".")
        assert isinstance(part, dict)
        for key in part:
            if key not in _PART_KEYS[kind]:
                raise _bad(f"{param}.{key}", f"Unknown parameter: '{param}.{key}'.", "unknown_parameter")
        if kind != "input_audio":
            value = part.get(kind)
            if not isinstance(value, str):
                raise _missing(f"{param}.{kind}")
            return len(value), 0
        audio = _object(part, "input_audio", frozenset({"data", "format"}), f"{param}.")
        fmt, data = audio.get("format"), audio.get("data")
        if fmt not in ("wav", "mp3"):
            raise _bad(f"{param}.input_audio.format", f"Invalid value: {fmt!r}. Supported values are: 'wav' and "
                       "'mp3'.")
        if not isinstance(data, str):
            raise _missing(f"{param}.input_audio.data")
        try:
            raw = base64.b64decode(data, validate=True)
            seconds = _wav_seconds(raw) if fmt == "wav" else _mp3_seconds(raw)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"{param}.input_audio.data", f"The audio data could not be decoded as {fmt}: {exc}.") from None
        return 0, math.ceil(seconds * INPUT_AUDIO_TOKENS_PER_S - 1e-9)

    # ------------------------------------------------------------------------------------------- answers

    def _due_s(self, started_s: float, k: int, previous_s: float) -> float:
        """When audio chunk k is due: the schedule plus its seeded jitter, never before the chunk ahead of it."""
        o = self.options
        extra = self.rng.uniform(0, o.jitter_ms) if o.jitter_ms > 0 else 0.0
        return max(previous_s, started_s + (o.first_audio_delay_ms + k * o.chunk_ms / o.speedup + extra) / 1000)

    def _usage(self, plan: _Plan, text: str, audio_samples: int) -> Json:
        """CompletionUsage (reference §2.4): the request's text and audio tokens in, the answer's out."""
        audio_out = math.ceil(audio_samples * OUTPUT_AUDIO_TOKENS_PER_S / API_RATE_HZ)
        text_out = math.ceil(len(text) / 4)
        prompt = plan.prompt_text_tokens + plan.prompt_audio_tokens
        return {"prompt_tokens": prompt, "completion_tokens": audio_out + text_out,
                "total_tokens": prompt + audio_out + text_out,
                "prompt_tokens_details": {"audio_tokens": plan.prompt_audio_tokens, "cached_tokens": 0,
                                          "text_tokens": plan.prompt_text_tokens, "image_tokens": 0},
                "completion_tokens_details": {"audio_tokens": audio_out, "text_tokens": text_out,
                                              "reasoning_tokens": 0, "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    async def _complete(self, plan: _Plan, record: StreamRecord, started_s: float) -> web.StreamResponse:
        """The non-streamed answer: one ``chat.completion`` once the whole reply is generated."""
        loop, pcm = asyncio.get_running_loop(), self.reply_pcm
        # a call is ready at the first token; audio once all its chunks are generated
        generated = 0 if plan.call else -(-pcm.size // ms_to_samples(self.options.chunk_ms))
        await asyncio.sleep(max(self._due_s(started_s, generated, started_s) - loop.time(), 0))
        message: Json = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if plan.call is not None:
            message["tool_calls"] = [{"id": self.new_id("call"), "type": "function",
                                      "function": {"name": plan.call[0], "arguments": plan.call[1]}}]
            usage, finish = self._usage(plan, plan.call[1], 0), "tool_calls"
        else:
            audio_id, expires_at = self.new_id("audio"), int(time.time()) + AUDIO_LIFETIME_S
            data = _wav_bytes(pcm) if plan.audio_format == "wav" else np.asarray(pcm, dtype="<i2").tobytes()
            message["audio"] = {"id": audio_id, "data": base64.b64encode(data).decode("ascii"),
                                "expires_at": expires_at, "transcript": plan.text}
            usage, finish = self._usage(plan, plan.text, pcm.size), "stop"
            self._audio[audio_id] = usage["completion_tokens_details"]["audio_tokens"]
            record.audio_ms = samples_to_ms(pcm.size)
            record.first_audio_s = loop.time() - started_s
        body = {"id": record.id, "object": "chat.completion", "created": int(time.time()), "model": plan.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage, "service_tier": "default", "system_fingerprint": None}
        self.completions.append(body)
        record.status, record.completed = 200, True
        return web.json_response(body)

    async def _stream(self, request: web.Request, plan: _Plan, record: StreamRecord,
                      started_s: float) -> web.StreamResponse:
        """The streamed answer: Server-Sent Events, one ``chat.completion.chunk`` each, then ``[DONE]``."""
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        record.status = 200
        out = _Chunks(self, response, plan, record.id or "", int(time.time()))
        try:
            if plan.call is not None:
                await self._stream_call(out, plan, started_s)
                text, samples = plan.call[1], 0
            else:
                samples = await self._stream_audio(out, plan, record, started_s, request)
                if samples < 0:
                    return response  # cut by a fault: no end, no usage
                text = plan.text
            if plan.include_usage:
                if self.take_fault("no_usage"):
                    record.fault = "no_usage"
                else:
                    await out.send([], usage=self._usage(plan, text, samples))
            await out.write(b"data: [DONE]\n\n")
            record.completed = True
        except ConnectionResetError:  # the client went away between aiohttp noticing and cancelling us
            record.cancelled = not self._closing
        return response

    async def _stream_call(self, out: _Chunks, plan: _Plan, started_s: float) -> None:
        """A function call: its id and name with the role, its arguments in fragments, ``tool_calls``."""
        assert plan.call is not None
        name, arguments = plan.call
        await asyncio.sleep(max(self._due_s(started_s, 0, started_s) - asyncio.get_running_loop().time(), 0))
        await out.delta({"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"index": 0, "id": self.new_id("call"), "type": "function",
             "function": {"name": name, "arguments": ""}}]})
        for start in range(0, len(arguments), 8):
            await out.delta({"tool_calls": [{"index": 0, "function": {"arguments": arguments[start:start + 8]}}]})
        await out.delta({}, finish_reason="tool_calls")

    async def _stream_audio(self, out: _Chunks, plan: _Plan, record: StreamRecord, started_s: float,
                            request: web.Request) -> int:
        """The spoken answer on the schedule; returns the samples sent, or -1 when a fault cut the stream."""
        loop, pcm, captured = asyncio.get_running_loop(), self.reply_pcm, self.options.stream_shape == "captured"
        step = ms_to_samples(self.options.chunk_ms)
        audio_id, sent, due_s = self.new_id("audio"), 0, started_s
        role: Json = {"role": "assistant", "content": None, "refusal": None}
        if not captured:
            await out.delta(role)
        for k in range(-(-pcm.size // step)):
            due_s = self._due_s(started_s, k, due_s)
            await asyncio.sleep(max(due_s - loop.time(), 0))
            if k == 0:  # the transcript runs ahead of the audio (reference §3.4)
                for words in _fragments(plan.text):
                    await out.delta({"audio": {"transcript": words}} if captured
                                    else {"content": None, "audio": {"id": audio_id, "transcript": words}})
            if k == 2 and self.take_fault("drop_mid_stream"):
                record.fault = "drop_mid_stream"
                if request.transport is not None:
                    request.transport.abort()  # a dead link: no terminating chunk, the client sees a cut body
                return -1
            if k == 2 and self.take_fault("stall_mid_stream"):
                record.fault = "stall_mid_stream"
                await asyncio.Event().wait()  # until the client leaves (aiohttp cancels this handler)
            chunk = pcm[k * step:(k + 1) * step]
            audio = {"id": audio_id, "data": pcm_to_b64(chunk)}
            await out.delta({**role, "audio": audio} if captured and k == 0 else {"audio": audio})
            if k == 0:
                record.first_audio_s = loop.time() - started_s
            sent += chunk.size
            record.audio_ms = samples_to_ms(sent)
        self._audio[audio_id] = math.ceil(sent * OUTPUT_AUDIO_TOKENS_PER_S / API_RATE_HZ)
        expiry = {"audio": {"expires_at": int(time.time()) + AUDIO_LIFETIME_S}}
        if captured:
            await out.send([{"index": 0, "delta": expiry}])  # the capture's last chunk: no finish_reason at all
        else:
            await out.delta(expiry)
            await out.delta({}, finish_reason="stop")
        return sent


class _Chunks:
    """Writes one stream's chunks (the envelope every chunk shares) and records each once it is written."""

    def __init__(self, sim: ChatSimulator, response: web.StreamResponse, plan: _Plan, chunk_id: str,
                 created: int) -> None:
        self.sim, self.response, self.plan = sim, response, plan
        self.envelope: Json = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                               "model": plan.model, "service_tier": "default", "system_fingerprint": None}

    async def delta(self, delta: Json, finish_reason: str | None = None) -> None:
        await self.send([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    async def send(self, choices: list[Json], usage: Json | None = None) -> None:
        """One chunk. With ``include_usage`` every chunk carries ``usage`` (null but on the last); the service
        pads chunks with a random ``obfuscation`` string unless ``include_obfuscation`` is false."""
        chunk: Json = {**self.envelope, "choices": choices}
        if self.plan.include_usage:
            chunk["usage"] = usage
        if self.plan.obfuscation:
            chunk["obfuscation"] = secrets.token_urlsafe(secrets.randbelow(12) + 1)
        text = json.dumps(chunk)
        await self.write(f"data: {text}\n\n".encode())
        self.sim.chunks.append(json.loads(text))

    async def write(self, data: bytes) -> None:
        await self.response.write(data)


def _optional(body: Json, key: str, kind: type, default: Any, prefix: str = "") -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _bad(f"{prefix}{key}", f"Invalid type for '{prefix}{key}': expected a {kind.__name__}.", "invalid_type")
    return value


def _object(body: Json, key: str, keys: frozenset[str], prefix: str = "") -> Json:
    """``body[key]`` as an object with only ``keys`` ({} when absent or null)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{prefix}{key}", f"Invalid type for '{prefix}{key}': expected an object.", "invalid_type")
    for name in value:
        if name not in keys:
            raise _bad(f"{prefix}{key}.{name}", f"Unknown parameter: '{prefix}{key}.{name}'.", "unknown_parameter")
    return value


def _tool_calls(message: Json, param: str) -> list[tuple[str, str]]:
    """An assistant message's function calls as (id, arguments)."""
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise _bad(f"{param}.tool_calls", "Invalid type: expected an array of tool calls.", "invalid_type")
    found = []
    for j, call in enumerate(calls):
        where = f"{param}.tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type") != "function" or not isinstance(call.get("id"), str):
            raise _bad(where, "Each tool call needs an 'id' and 'type': 'function'.")
        function = _object(call, "function", frozenset({"name", "arguments"}), f"{where}.")
        for key in call:
            if key not in ("id", "type", "function"):
                raise _bad(f"{where}.{key}", f"Unknown parameter: '{where}.{key}'.", "unknown_parameter")
        if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
            raise _missing(f"{where}.function.arguments")
        found.append((call["id"], function["arguments"]))
    return found


def _unanswered(pending: dict[str, int]) -> _ApiError:
    index = min(pending.values())
    return _bad(f"messages[{index}].role", "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(sorted(pending)), None)


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _arguments(tool: Json) -> str:
    """Arguments for a call to ``tool``: TOOL_QUESTION as its first required string parameter."""
    schema = tool["function"].get("parameters") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    props = props if isinstance(props, dict) else {}
    strings = [name for name, spec in props.items() if isinstance(spec, dict) and spec.get("type") == "string"]
    required = [name for name in schema.get("required") or [] if name in strings]
    return json.dumps({(required or strings or ["query"])[0]: TOOL_QUESTION})


def _fragments(text: str) -> list[str]:
    """``text`` as word-sized transcript fragments (each but the first starting with its space); joined: ``text``."""
    return [part for part in re.split(r"(?<=\S)(?=\s)", text) if part]


def _wav_seconds(raw: bytes) -> float:
    """The duration of a mono 16-bit PCM WAV, at any rate; ValueError for anything else."""
    try:
        with wave.open(io.BytesIO(raw)) as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() <= 0:
                raise ValueError(f"expected mono 16-bit PCM, got {w.getnchannels()} channel(s) of "
                                 f"{8 * w.getsampwidth()} bits")
            # a header written to a pipe claims ~2**30 frames: reading "that many" reads to the end of the data
            frames = len(w.readframes(w.getnframes())) // 2
            return frames / float(w.getframerate())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a RIFF/WAV file ({exc})") from None


def _mp3_seconds(raw: bytes) -> float:
    """An MP3's duration, estimated from its size (the simulator decodes no MP3): ID3 tag or frame sync first."""
    if not (raw.startswith(b"ID3") or (len(raw) > 1 and raw[0] == 0xFF and raw[1] & 0xE0 == 0xE0)):
        raise ValueError("no ID3 tag or MPEG frame sync at the start")
    return len(raw) * 8 / MP3_ESTIMATE_BPS


def _wav_bytes(pcm: Pcm) -> bytes:
    """``pcm`` (24 kHz mono) in a RIFF/WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(API_RATE_HZ)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buffer.getvalue()


async def serve(options: ChatSimOptions, host: str, port: int) -> None:
    """Run until cancelled; print one line ``kioskd simulate: listening on http://HOST:PORT/v1`` (flush)."""
    sim = ChatSimulator(options)
    await serve_until_cancelled(sim, host, port, lambda: sim.url)
