"""The Realtime simulators' one session core (GA protocol), whatever carries it: ``realtime_server.py`` (WebSocket)
and ``webrtc_server.py`` (WebRTC: the ``oai-events`` data channel plus an Opus audio track each way).

Written from the protocol reference (shared/reference/realtime.md §1-11, webrtc.md §1), never from kioskd's client
codec (``kioskd.core.realtime`` is not imported), so one typo cannot pass on both sides.

``Session`` is the protocol: ``session.update`` with the GA rules, the input audio buffer (append, clear, commit with
the 100 ms minimum), one response at a time on the SimOptions schedule (first-delta delay, speed-up, seeded jitter and
spikes) with its transcript deltas, ``response.cancel``, items (create, retrieve, delete, ``truncate`` checked against
the audio generated for the item), function calls, usage, ``invalid_event`` for garbage, the session lifetime. A
transport subclass says only how a frame goes out (``transmit``), how a chunk of reply audio goes out
(``emit_audio``: an ``response.output_audio.delta`` event, or PCM written into a paced track), what follows
``response.done`` (``after_response``), how the link is cut (``drop``, ``go_silent``, ``end``) and what
``output_audio_buffer.clear`` does (refused unless the transport overrides it).

``RealtimeRecords`` is what both simulators record for tests: every list a test inspects, across all connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.core.g711 import ULAW_RATE_HZ, ulaw_decode
from kioskd.core.pcm import API_RATE_HZ, Pcm, b64_to_pcm, ms_to_samples, samples_to_ms
from kioskd.sim.common import DEFAULT_REPLY_TEXT, TOOL_QUESTION, Json, SimServer
from kioskd.sim.voice import reply_audio

DEFAULT_MODEL: Final = "gpt-realtime"
COMMIT_MIN_SAMPLES: Final = ms_to_samples(100)
#: fault modes: "bad_frames" sends, before each reply's audio, a frame that is not JSON, an audio delta with bad
#: base64, an event type no client knows, and a retryable `error` event (server_error)
KNOWN_FAULTS: Final[frozenset[str]] = frozenset({"bad_frames"})


@dataclass(frozen=True)
class SimOptions:
    """How the simulated server behaves. Times in ms unless named otherwise.

    Delta k of a reply is due ``first_delta_delay_ms + k * delta_ms / speedup`` after ``response.create``, plus
    its own extra delay (uniform in [0, jitter_ms], plus ``spike_ms`` on every ``spike_every``-th delta); a
    delayed delta holds back the ones behind it, as a stalled network would.
    """

    api_key: str | None = None
    first_delta_delay_ms: float = 300.0
    delta_ms: int = 100
    speedup: float = 4.0
    jitter_ms: float = 0.0
    spike_ms: float = 0.0
    spike_every: int = 0
    voice: Literal["speech", "tone"] = "speech"
    tone_hz: float = 440.0
    reply_ms: int = 2000
    reply_text: str = DEFAULT_REPLY_TEXT
    session_lifetime_s: float = 3600.0
    seed: int = 1
    faults: tuple[str, ...] = ()
    tool_call: str | None = None
    """When the session declares a function tool of this name, each new question is answered first with a call
    to it (``tool_arguments``), and the answer follows the client's ``function_call_output``."""
    tool_arguments: str = json.dumps({"query": TOOL_QUESTION})
    preamble_ms: int = 0
    """Audio the calling response says before its call ("Let me check"), in the same response; 0: none."""
    tool_loop: bool = False
    """The model calls the tool again after every output, unless the response says ``tool_choice: none``."""
    models: tuple[str, ...] = ("gpt-realtime", "gpt-realtime-mini", "gpt-audio-1.5", "gpt-audio")
    """The models ``GET /v1/models/{model}`` knows (any other: 404 ``model_not_found``)."""
    shutdown_dates: tuple[tuple[str, str], ...] = ()
    """(model, date) pairs: the ``shutdown_date`` those models report."""

    def __post_init__(self) -> None:
        if self.delta_ms <= 0 or self.speedup <= 0 or self.reply_ms <= 0 or self.session_lifetime_s <= 0:
            raise ValueError("delta_ms, speedup, reply_ms and session_lifetime_s must be positive")
        if min(self.first_delta_delay_ms, self.jitter_ms, self.spike_ms, self.spike_every) < 0:
            raise ValueError("delays, jitter and spikes cannot be negative")
        unknown = set(self.faults) - KNOWN_FAULTS
        if unknown:
            raise ValueError(f"unknown simulator faults: {', '.join(sorted(unknown))}")



class SessionGone(Exception):
    """The transport under a session is gone (closed, cut, hung up): the session ends without another frame."""


class RealtimeRecords(SimServer):
    """What a Realtime simulator records, whatever its transport: public lists a test inspects, across all
    connections. Everything runs on the event loop that called ``start()``; read the records from that loop, or
    after ``close()``."""

    def __init__(self, options: SimOptions, one_shot_faults: frozenset[str]) -> None:
        super().__init__(one_shot_faults)
        self.options = options
        self.client_events: list[Json] = []
        self.server_events: list[Json] = []
        #: when each was received / sent (time.monotonic()), index for index
        self.client_times: list[float] = []
        self.server_times: list[float] = []
        self.fault_frames: list[str] = []  # deliberately broken frames sent by fault modes (not in server_events)
        self.committed_audio: list[Pcm] = []
        #: each commit's input format ("audio/pcm" or "audio/pcmu"), index for index with committed_audio
        #: (which always holds 24 kHz PCM16: µ-law is decoded and resampled from 8 kHz)
        self.committed_formats: list[str] = []
        #: item id → ms of its audio generated so far (sent as deltas, or written into the output track)
        self.sent_audio_ms: dict[str, int] = {}
        self.truncations: list[tuple[str, int]] = []
        #: the conversation's item ids at each response.create: what each answer was given
        self.contexts: list[list[str]] = []
        #: item id → seconds from response.create arriving to its first audio going out (the first delta sent, or
        #: the first PCM written into the output track): the server's own share of a turn's latency, first-delta
        #: jitter included (benchmarks subtract it to get the client's)
        self.first_delta_delay_s: dict[str, float] = {}
        self.connections = 0
        self.model_lookups: list[str] = []
        self.request_headers: list[dict[str, str]] = []
        self.rng = random.Random(options.seed)
        self.reply_pcm: Pcm = np.zeros(0, dtype=np.int16)

    async def synthesise(self) -> None:
        """The reply voice, once, off the event loop (espeak-ng runs as a child process)."""
        o = self.options
        self.reply_pcm = await asyncio.to_thread(reply_audio, o.voice, o.reply_text, o.tone_hz, o.reply_ms)

    def authorized(self, headers: dict[str, str]) -> bool:
        """``headers`` (lower-case names) carry the configured key, as ``Authorization: Bearer`` or ``api-key``."""
        key = self.options.api_key
        return key is None or headers.get("authorization") == f"Bearer {key}" or headers.get("api-key") == key

    def model_answer(self, model: str, headers: dict[str, str]) -> tuple[int, Json]:
        """``GET /v1/models/{model}``: (status, body): the Model object (with its ``shutdown_date``), 404
        ``model_not_found``, or 401 without the key."""
        if not self.authorized(headers):
            return 401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_api_key"}}
        self.model_lookups.append(model)
        if model not in self.options.models:
            return 404, {"error": {"message": f"The model '{model}' does not exist or you do not have access to it.",
                                   "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
        return 200, {"id": model, "object": "model", "created": 1756339200, "owned_by": "system",
                     "shutdown_date": dict(self.options.shutdown_dates).get(model)}


def error_body(code: str, message: str, event_id: str | None, param: str | None = None,
                kind: str = "invalid_request_error") -> Json:
    return {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}


class ClientError(Exception):
    """A client event the server refuses: becomes one ``error`` event; the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class Response:
    id: str
    item_id: str
    previous_item_id: str | None
    pcm: Pcm
    text: str
    call: Json | None = None  # the function_call item this response ends with
    input_tokens: tuple[int, int] = (0, 0)  # (text, audio) of the conversation it was given
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    sent_samples: int = 0
    transcript: str = ""
    task: asyncio.Task[None] | None = None


# GA session keys a client may set (reference §3.1); anything else is refused as unknown.
_SESSION_KEYS: Final = frozenset({"type", "model", "output_modalities", "instructions", "audio", "include", "tools",
                                  "tool_choice", "max_output_tokens", "truncation", "tracing", "prompt"})
_AUDIO_KEYS: Final = {"input": frozenset({"format", "noise_reduction", "transcription", "turn_detection"}),
                      "output": frozenset({"format", "voice", "speed"})}
_PCM_FORMAT: Final = {"type": "audio/pcm", "rate": API_RATE_HZ}
#: the input formats the simulator takes: PCM16 24 kHz, and G.711 µ-law (8 kHz by the standard)
_INPUT_FORMATS: Final = ({"type": "audio/pcm", "rate": API_RATE_HZ}, {"type": "audio/pcmu"})


class Session:
    """One session: the config, the input buffer, the conversation and the active response. A transport subclass
    implements ``transmit`` and ``emit_audio`` (and, where it differs, the other hooks below), and feeds each
    client frame, in order, to ``dispatch``."""

    def __init__(self, sim: RealtimeRecords, model: str) -> None:
        self.sim, self.o = sim, sim.options
        self.session = _default_session(sim.new_id("sess"), model, int(time.time() + self.o.session_lifetime_s))
        self.conversation_id = sim.new_id("conv")
        self.buffer: list[Pcm] = []
        self.items: dict[str, str] = {}  # item_id -> role (or function_call / function_call_output), in order
        self.calls: dict[str, str] = {}  # call_id -> output ("" until the client returns one)
        self.tokens: dict[str, tuple[int, int]] = {}  # item_id -> (text, audio) tokens it costs as input
        self.active: Response | None = None
        self.expiring = False
        self.expiry: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.handlers: dict[str, Callable[[Json, str | None], Awaitable[None]]] = {
            "session.update": self.session_update,
            "input_audio_buffer.append": self.append,
            "input_audio_buffer.clear": self.clear,
            "input_audio_buffer.commit": self.commit,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
            "conversation.item.truncate": self.truncate,
            "conversation.item.create": self.item_create,
            "conversation.item.retrieve": self.item_retrieve,
            "conversation.item.delete": self.item_delete,
            "output_audio_buffer.clear": self.output_clear,
        }

    # ------------------------------------------------------------------------------------------- the transport

    async def transmit(self, text: str) -> None:
        """Put one frame on the wire; raise SessionGone if the transport is gone."""
        raise NotImplementedError

    async def emit_audio(self, r: Response, ids: Json, chunk: Pcm) -> None:
        """Send one chunk of the response's audio (called on the SimOptions schedule, in order)."""
        raise NotImplementedError

    async def after_response(self, r: Response) -> None:
        """What follows ``response.done`` (nothing over WebSocket)."""

    async def drop(self) -> None:
        """Fault ``drop_mid_reply``: cut the link without a goodbye."""
        raise NotImplementedError

    async def go_silent(self) -> None:
        """Fault ``silent_mid_reply``: stop reading and sending without closing anything."""
        raise NotImplementedError

    async def end(self) -> None:
        """Close the transport after ``session_expired`` (the error is already sent)."""
        raise NotImplementedError

    async def output_clear(self, event: Json, event_id: str | None) -> None:
        raise ClientError("invalid_event", "output_audio_buffer.clear is only supported for WebRTC and SIP "
                          "connections.", "type")

    # ------------------------------------------------------------------------------------------- plumbing

    async def send(self, type_: str, **fields: Any) -> None:
        """Send one server event with a fresh event_id; recorded once it is on the wire, in wire order.
        The record is parsed back from the frame: later changes to the session cannot rewrite history."""
        text = json.dumps({"type": type_, "event_id": self.sim.new_id("event"), **fields})
        async with self.lock:
            await self.transmit(text)
            self.sim.server_events.append(json.loads(text))
            self.sim.server_times.append(time.monotonic())

    async def send_raw(self, text: str) -> None:
        """Send a deliberately broken frame (fault modes only); recorded apart from the valid server events."""
        async with self.lock:
            await self.transmit(text)
            self.sim.fault_frames.append(text)

    async def error(self, code: str, message: str, client_event_id: str | None, param: str | None = None) -> None:
        await self.send("error", error=error_body(code, message, client_event_id, param))

    async def open(self) -> None:
        """The session begins: ``session.created``, and its lifetime starts."""
        await self.send("session.created", session=self.session)
        self.expiry = asyncio.create_task(self.expire())

    async def finish(self) -> None:
        """The session is over (the transport is gone or closing): stop the expiry and the active response."""
        for task in (self.expiry, self.active.task if self.active else None):
            if task is not None:
                if not (task is self.expiry and self.expiring):  # let the expiry finish its close handshake
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SessionGone):
                    await task

    async def expire(self) -> None:
        await asyncio.sleep(self.o.session_lifetime_s)
        self.expiring = True
        if self.active is not None and self.active.task is not None:
            self.active.task.cancel()  # the session ends mid-reply: not one more delta
        await self.error("session_expired", "Your session hit the maximum duration of 60 minutes.", None)
        await self.end()

    async def dispatch(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            await self.error("invalid_event", "The server could not parse the event: it is not valid JSON.", None)
            return
        if not isinstance(event, dict):
            await self.error("invalid_event", "The event must be a JSON object.", None)
            return
        self.sim.client_events.append(event)
        self.sim.client_times.append(time.monotonic())
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        type_ = event.get("type")
        if not isinstance(type_, str):
            await self.error("invalid_event", "The 'type' field is missing.", event_id, "type")
            return
        handler = self.handlers.get(type_)
        if handler is None:
            await self.error("invalid_event", f"Invalid value: '{type_}'. Supported values are: "
                             + ", ".join(f"'{t}'" for t in self.handlers) + ".", event_id, "type")
            return
        try:
            await handler(event, event_id)
        except ClientError as exc:
            await self.error(exc.code, exc.message, event_id, exc.param)

    # ------------------------------------------------------------------------------------------- session

    async def session_update(self, event: Json, event_id: str | None) -> None:
        self.configure(event.get("session"))
        await self.send("session.updated", session=self.session)

    def configure(self, update: object) -> None:
        """Apply a GA session update (``session.update``'s ``session``, or a WebRTC call's ``session`` part) as a
        whole or not at all: ClientError names the first thing refused."""
        if not isinstance(update, dict):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        for key in update:
            if key not in _SESSION_KEYS:
                raise _unknown(f"session.{key}")
        if "type" not in update:
            raise ClientError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                               "session.type")
        if update["type"] != "realtime":
            raise _invalid("session.type", update["type"], "the simulator only runs 'realtime' sessions")
        if update.get("output_modalities", ["audio"]) != ["audio"]:
            raise _invalid("session.output_modalities", update["output_modalities"],
                           "the simulator only speaks: use ['audio']")
        audio = update.get("audio", {})
        if not isinstance(audio, dict):
            raise _invalid("session.audio", audio, "expected an object")
        for direction, part in audio.items():
            if direction not in _AUDIO_KEYS:
                raise _unknown(f"session.audio.{direction}")
            if not isinstance(part, dict):
                raise _invalid(f"session.audio.{direction}", part, "expected an object")
            for key in part:
                if key not in _AUDIO_KEYS[direction]:
                    raise _unknown(f"session.audio.{direction}.{key}")
            if direction == "input" and "format" in part and part["format"] not in _INPUT_FORMATS:
                raise _invalid("session.audio.input.format", part["format"],
                               "the simulator only hears {'type': 'audio/pcm', 'rate': 24000} or "
                               "{'type': 'audio/pcmu'}")
            if direction == "output" and "format" in part and part["format"] != _PCM_FORMAT:
                raise _invalid(f"session.audio.{direction}.format", part["format"],
                               "the simulator only speaks {'type': 'audio/pcm', 'rate': 24000}")
        # valid as a whole: apply only what is present ("model" cannot change, so it is left as it is)
        for key, value in update.items():
            if key not in ("audio", "model"):
                self.session[key] = value
        for direction, part in audio.items():
            self.session["audio"][direction].update(part)

    # ------------------------------------------------------------------------------------------- input audio

    async def append(self, event: Json, event_id: str | None) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        if self.ulaw:  # one byte a sample at 8 kHz, buffered as it came (resampled whole at commit)
            try:
                self.buffer.append(ulaw_decode(base64.b64decode(audio, validate=True)))
            except (binascii.Error, ValueError):
                raise ClientError("invalid_value", "Invalid 'audio': expected base64 of G.711 µ-law audio.",
                                   "audio") from None
            return
        try:
            self.buffer.append(b64_to_pcm(audio))
        except ValueError:
            raise ClientError("invalid_value", "Invalid 'audio': expected base64 of PCM16 audio.", "audio") from None

    @property
    def input_format(self) -> str:
        """How appended audio is encoded: the session's input format type ("audio/pcm" or "audio/pcmu")."""
        return str(self.session["audio"]["input"]["format"].get("type"))

    @property
    def ulaw(self) -> bool:
        return self.input_format == "audio/pcmu"

    async def clear(self, event: Json, event_id: str | None) -> None:
        self.buffer.clear()
        await self.send("input_audio_buffer.cleared")

    async def commit(self, event: Json, event_id: str | None) -> None:
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, dtype=np.int16)
        rate = ULAW_RATE_HZ if self.ulaw else API_RATE_HZ  # the 100 ms minimum: 800 bytes of µ-law
        if pcm.size < ms_to_samples(100, rate):
            raise ClientError("input_audio_buffer_commit_empty",
                               "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                               f"of audio, but buffer only has {pcm.size * 1000 / rate:.2f}ms of audio.")
        self.buffer.clear()
        if rate != API_RATE_HZ:
            pcm = soxr.resample(pcm, rate, API_RATE_HZ)
        self.sim.committed_audio.append(pcm)
        self.sim.committed_formats.append(self.input_format)
        item_id, previous = self.sim.new_id("item"), self.last_item_id()
        self.items[item_id] = "user"
        self.tokens[item_id] = (0, pcm.size * 10 // API_RATE_HZ)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        await self.send("conversation.item.added", item=item, previous_item_id=previous)
        await self.send("conversation.item.done", item=item, previous_item_id=previous)

    def last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    # ------------------------------------------------------------------------------------------- responses

    async def response_create(self, event: Json, event_id: str | None) -> None:
        if self.active is not None:
            raise ClientError("conversation_already_has_active_response",
                               f"Conversation already has an active response in progress: {self.active.id}. "
                               "Wait until the response is finished before creating a new one.")
        if not isinstance(event.get("response", {}), dict):
            raise _invalid("response", event["response"], "expected an object")
        started_s = asyncio.get_running_loop().time()
        response = self.plan(event.get("response") or {})
        self.sim.contexts.append(list(self.items))  # what the model is given: the conversation so far
        text = len(str(self.session.get("instructions") or "")) + len(json.dumps(self.session.get("tools") or []))
        response.input_tokens = (text // 4 + sum(t for t, _ in self.tokens.values()),
                                 sum(a for _, a in self.tokens.values()))
        if response.pcm.size:
            self.items[response.item_id] = "assistant"
            self.sim.sent_audio_ms[response.item_id] = 0
        self.active = response
        response.task = asyncio.create_task(self.stream(response, started_s))

    def plan(self, overrides: Json) -> Response:
        """What the simulated model does now: call the tool (after a short preamble, if configured) when the
        session declares it and the last item is a fresh question (or, with ``tool_loop``, a tool's output);
        otherwise answer, grounded in the tool outputs it was given."""
        o, last = self.o, self.last_item_id()
        choice = overrides.get("tool_choice", self.session.get("tool_choice", "auto"))
        declared = {t.get("name") for t in self.session.get("tools") or [] if isinstance(t, dict)}
        last_kind = self.items.get(last) if last else None
        calling = (o.tool_call in declared and choice != "none"
                   and (last_kind == "user" or (o.tool_loop and last_kind == "function_call_output")))
        response = Response(self.sim.new_id("resp"), self.sim.new_id("item"), last, self.sim.reply_pcm, o.reply_text)
        if calling:
            call_id = self.sim.new_id("call")
            response.pcm = self.sim.reply_pcm[:ms_to_samples(o.preamble_ms)]
            response.text = "Let me check."
            response.call = {"id": self.sim.new_id("item"), "object": "realtime.item", "type": "function_call",
                             "status": "completed", "call_id": call_id, "name": o.tool_call,
                             "arguments": o.tool_arguments}
        elif any(self.calls.values()):
            told = " ".join(out for out in self.calls.values() if out)
            response.text = f"According to the exhibit: {told}"[:500]
            self.calls.clear()
        return response

    async def response_cancel(self, event: Json, event_id: str | None) -> None:
        wanted = event.get("response_id")
        response = self.active
        if response is None or (wanted is not None and wanted != response.id):
            raise ClientError("response_cancel_not_active", "Cancellation failed: no active response found")
        response.cancel.set()
        if response.task is not None:
            # the client's next event is handled after this response.done, as a real server's would be
            await asyncio.shield(response.task)

    async def stream(self, r: Response, started_s: float) -> None:
        """One response from response.created to response.done, on the delivery schedule of SimOptions: its
        audio message (if it says anything), then its function call (if it makes one)."""
        output: list[Json] = []
        try:
            await self.send("response.created", response=self.response_object(r, "in_progress", []))
            await self.send("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60},
                {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 60}])
            if r.pcm.size:
                if not await self.speak(r, started_s):
                    return
                output.append(self.assistant_item(r, "incomplete" if r.cancel.is_set() else "completed"))
            if r.call is not None and not r.cancel.is_set():
                output.append(await self.call(r, len(output)))
            status = "cancelled" if r.cancel.is_set() else "completed"
            await self.send("response.done", response=self.response_object(r, status, output))
            self.active = None
            await self.after_response(r)
        except SessionGone:
            pass  # the session is over; the transport ends it
        finally:
            self.active = None

    async def speak(self, r: Response, started_s: float) -> bool:
        """The response's audio message item; False if the connection was cut by a fault mode."""
        o, loop, pcm = self.o, asyncio.get_running_loop(), r.pcm
        ids = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        item = self.assistant_item(r, "in_progress", with_content=False)
        await self.send("response.output_item.added", response_id=r.id, output_index=0, item=item)
        await self.send("conversation.item.added", item=item, previous_item_id=r.previous_item_id)
        await self.send("response.content_part.added", **ids, part={"type": "audio", "transcript": ""})
        if "bad_frames" in o.faults:
            await self.send_raw("{this is not json")
            await self.send_raw(json.dumps({"type": "response.output_audio.delta", "event_id": self.sim.new_id("event"),
                                            **ids, "delta": "%%not-base64%%"}))
            await self.send_raw(json.dumps({"type": "response.hologram.delta", "event_id": self.sim.new_id("event")}))
            await self.send("error", error=error_body(
                "server_error", "The server had an error while processing your request.", None, kind="server_error"))
        step = ms_to_samples(o.delta_ms)
        n_deltas = -(-pcm.size // step)
        due_s = started_s
        for k in range(n_deltas):
            due_s = max(due_s, started_s + (o.first_delta_delay_ms + k * o.delta_ms / o.speedup
                                            + self.extra_delay_ms(k)) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.cancel.wait(), max(due_s - loop.time(), 0))
            if r.cancel.is_set():
                break
            if k == 2 and self.sim.take_fault("drop_mid_reply"):
                await self.drop()
                return False
            if k == 2 and self.sim.take_fault("silent_mid_reply"):
                await self.go_silent()
                return False
            if k == 2 and self.sim.take_fault("error_mid_reply"):
                await self.send("error", error=error_body(
                    "server_error", "The server had an error while processing your request.", None,
                    kind="server_error"))
            words = text_share(r.text, k + 1, n_deltas)
            if len(words) > len(r.transcript):
                await self.send("response.output_audio_transcript.delta", **ids, delta=words[len(r.transcript):])
                r.transcript = words
            chunk = pcm[k * step:(k + 1) * step]
            await self.emit_audio(r, ids, chunk)
            if k == 0:
                self.sim.first_delta_delay_s[r.item_id] = loop.time() - started_s
            r.sent_samples += chunk.size
            self.sim.sent_audio_ms[r.item_id] = samples_to_ms(r.sent_samples)
        await self.send("response.output_audio.done", **ids)
        await self.send("response.output_audio_transcript.done", **ids, transcript=r.transcript)
        await self.send("response.content_part.done", **ids, part={"type": "audio", "transcript": r.transcript})
        item = self.assistant_item(r, "incomplete" if r.cancel.is_set() else "completed")
        self.tokens[r.item_id] = (len(r.transcript) // 4, r.sent_samples * 20 // API_RATE_HZ)
        await self.send("response.output_item.done", response_id=r.id, output_index=0, item=item)
        await self.send("conversation.item.done", item=item, previous_item_id=r.previous_item_id)
        return True

    async def call(self, r: Response, index: int) -> Json:
        """The response's function_call item: added, its arguments in two deltas, done (reference
        model-features §1.2)."""
        assert r.call is not None
        call, previous = r.call, self.last_item_id()
        self.items[call["id"]] = "function_call"
        self.tokens[call["id"]] = (len(call["arguments"]) // 4, 0)
        self.calls[call["call_id"]] = ""
        ids = {"response_id": r.id, "item_id": call["id"], "output_index": index, "call_id": call["call_id"]}
        added = {**call, "status": "in_progress", "arguments": ""}
        await self.send("response.output_item.added", response_id=r.id, output_index=index, item=added)
        await self.send("conversation.item.added", item=added, previous_item_id=previous)
        half = len(call["arguments"]) // 2
        for part in (call["arguments"][:half], call["arguments"][half:]):
            await self.send("response.function_call_arguments.delta", **ids, delta=part)
        await self.send("response.function_call_arguments.done", **ids, name=call["name"], arguments=call["arguments"])
        await self.send("response.output_item.done", response_id=r.id, output_index=index, item=call)
        await self.send("conversation.item.done", item=call, previous_item_id=previous)
        return dict(call)

    def extra_delay_ms(self, k: int) -> float:
        """Delta k's network delay: seeded jitter plus the periodic spike."""
        o = self.o
        extra = self.sim.rng.uniform(0, o.jitter_ms) if o.jitter_ms > 0 else 0.0
        if o.spike_every > 0 and (k + 1) % o.spike_every == 0:
            extra += o.spike_ms
        return extra

    def assistant_item(self, r: Response, status: str, with_content: bool = True) -> Json:
        content = [{"type": "output_audio", "transcript": r.transcript}] if with_content else []
        return {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": content}

    def response_object(self, r: Response, status: str, output: list[Json]) -> Json:
        details: Json | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": "client_cancelled"}
        elif status == "completed":
            details = {"type": "completed"}
        return {
            "id": r.id, "object": "realtime.response", "conversation_id": self.conversation_id,
            "status": status, "status_details": details, "output": output, "output_modalities": ["audio"],
            "max_output_tokens": self.session.get("max_output_tokens", "inf"), "metadata": None,
            "audio": {"output": {"format": dict(_PCM_FORMAT), "voice": self.session["audio"]["output"]["voice"]}},
            "usage": None if status == "in_progress" else self.usage(r),
        }

    def usage(self, r: Response) -> Json:
        """Plausible token counts: 1 token per 100 ms of input audio, per 50 ms of output audio, per 4 chars. The
        input is the whole conversation at the response's start (instructions and tools, then every item), as
        the service bills it: it grows with each turn until items are deleted."""
        text_in, audio_in = r.input_tokens
        audio_out = r.sent_samples * 20 // API_RATE_HZ
        text_out = (len(r.transcript) + len(r.call["arguments"] if r.call else "")) // 4
        zero = {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}
        return {"total_tokens": audio_in + text_in + audio_out + text_out, "input_tokens": audio_in + text_in,
                "output_tokens": audio_out + text_out,
                "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                        "cached_tokens": 0, "cached_tokens_details": zero},
                "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}

    # ------------------------------------------------------------------------------------------- items

    async def truncate(self, event: Json, event_id: str | None) -> None:
        item_id, content_index, end_ms = event.get("item_id"), event.get("content_index"), event.get("audio_end_ms")
        for name, value in (("item_id", item_id), ("content_index", content_index), ("audio_end_ms", end_ms)):
            if value is None:
                raise ClientError("missing_required_parameter", f"Missing required parameter: '{name}'.", name)
        if not isinstance(item_id, str) or item_id not in self.items:
            raise ClientError("item_not_found", f"Item with item_id not found: {item_id}", "item_id")
        if self.items[item_id] != "assistant":
            raise ClientError("invalid_value", "Only assistant messages can be truncated.", "item_id")
        if content_index != 0:
            raise _invalid("content_index", content_index, "the audio is content part 0")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise _invalid("audio_end_ms", end_ms, "expected a non-negative integer")
        sent_ms = self.sim.sent_audio_ms.get(item_id, 0)
        if end_ms > sent_ms:
            raise ClientError("invalid_value", f"Audio content of {sent_ms}ms is already shorter than {end_ms}ms.",
                               "audio_end_ms")
        self.sim.truncations.append((item_id, end_ms))
        await self.send("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms)

    async def item_create(self, event: Json, event_id: str | None) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ClientError("missing_required_parameter", "Missing required parameter: 'item.type'.", "item")
        if item["type"] == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or call_id not in self.calls:
                raise _invalid("item.call_id", call_id, "no function_call item with this call_id")
            if not isinstance(output, str):
                raise ClientError("missing_required_parameter", "Missing required parameter: 'item.output'.",
                                   "item.output")
            self.calls[call_id] = output
        given = item.get("id")
        item_id = given if isinstance(given, str) else self.sim.new_id("item")
        if item_id in self.items:
            raise _invalid("item.id", item_id, "an item with this id already exists")
        previous = self.last_item_id()
        self.items[item_id] = str(item.get("role", item["type"]))
        self.tokens[item_id] = (len(str(item.get("output", ""))) // 4, 0)
        stored = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        await self.send("conversation.item.added", item=stored, previous_item_id=previous)
        await self.send("conversation.item.done", item=stored, previous_item_id=previous)

    async def item_retrieve(self, event: Json, event_id: str | None) -> None:
        item_id = self.known_item(event)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": self.items[item_id],
                "status": "completed", "content": []}
        await self.send("conversation.item.retrieved", item=item)

    async def item_delete(self, event: Json, event_id: str | None) -> None:
        item_id = self.known_item(event)
        del self.items[item_id]
        self.tokens.pop(item_id, None)
        await self.send("conversation.item.deleted", item_id=item_id)

    def known_item(self, event: Json) -> str:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.items:
            raise ClientError("item_not_found", f"Item with item_id not found: {item_id}", "item_id")
        return item_id



def _unknown(param: str) -> ClientError:
    return ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)


def _invalid(param: str, value: object, why: str) -> ClientError:
    return ClientError("invalid_value", f"Invalid value for '{param}': {value!r} ({why}).", param)


def text_share(text: str, done: int, total: int) -> str:
    """The prefix of ``text`` spoken after ``done`` of ``total`` deltas, cut at a word boundary."""
    if done >= total:
        return text
    cut = len(text) * done // total
    space = text.rfind(" ", 0, cut + 1)
    return text[: space + 1] if space >= 0 else ""


def _default_session(session_id: str, model: str, expires_at: int) -> Json:
    """A new GA session as the server reports it (reference §3.2): server_vad on, voice alloy."""
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": "You are a helpful museum guide.", "tools": [],
        "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto", "prompt": None,
        "expires_at": expires_at, "include": None,
        "audio": {
            "input": {"format": dict(_PCM_FORMAT), "transcription": None, "noise_reduction": None,
                      "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 200, "idle_timeout_ms": None,
                                         "create_response": True, "interrupt_response": True}},
            "output": {"format": dict(_PCM_FORMAT), "voice": "alloy", "speed": 1.0},
        },
    }

