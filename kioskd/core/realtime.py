"""The Realtime API GA codec: server JSON → typed inputs, and intentions → the client events kioskd sends.

This is the only module that turns wire JSON into kioskd values, and kioskd's intentions into wire JSON. It is written from
``shared/reference/realtime.md`` (GA shape): ``session.type: "realtime"``, ``audio.input.format`` objects,
``response.output_audio.delta`` and so on. It never sends the beta header and never builds a beta field.

Parsing is total: a frame that cannot be used becomes ``BadEvent(type, reason, detail)``, its reason one of
kioskd's own words (``events.BadReason``); a type kioskd does not know becomes ``Unknown(type)``. Every server
event is a JSON text frame: a binary frame is a bad event, never decoded. ``error`` frames are parsed leniently
(a recorded one lacks ``event_id``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, Final, Protocol

import numpy as np

from kioskd.core import events as ev
from kioskd.core.g711 import ulaw_encode
from kioskd.core.pcm import API_RATE_HZ, BYTES_PER_SAMPLE, Pcm, b64_to_pcm, ms_to_samples, pcm_to_b64, samples_to_ms
from kioskd.core.settings import InputFormat, ToolSpec

#: GA server events that kioskd accepts and that change nothing in a turn
ACKNOWLEDGED: Final = frozenset(
    {
        "conversation.created", "conversation.item.done",
        "conversation.item.deleted", "conversation.item.retrieved", "input_audio_buffer.cleared",
        "response.output_item.added", "response.content_part.added",
        "response.content_part.done", "response.output_audio_transcript.delta", "response.output_text.delta",
        "response.output_text.done", "rate_limits.updated", "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.timeout_triggered",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared",
    }
)

AUDIO_FORMAT: Final = {"type": "audio/pcm", "rate": API_RATE_HZ}
#: ``audio.input.format`` for each ``audio.input_format``: G.711 µ-law is 8 kHz by the standard (reference §8)
INPUT_FORMATS: Final[dict[str, dict[str, Any]]] = {"pcm16": AUDIO_FORMAT, "pcmu": {"type": "audio/pcmu"}}
#: the most audio one delta may carry. Deltas are tens to a few hundred ms (a few KB of base64, reference §8);
#: a longer one is a bad event, not played (one 15 MB delta would be four minutes of audio).
MAX_DELTA_MS: Final = 2000
_MAX_DELTA_B64_CHARS: Final = -(-ms_to_samples(MAX_DELTA_MS) * BYTES_PER_SAMPLE // 3) * 4
#: the longest instructions kioskd sends (UTF-8 bytes): the server echoes them in every session.created /
#: session.updated, the largest events it sends kioskd, so they bound adapters/realtime_ws.MAX_FRAME_BYTES
INSTRUCTIONS_MAX_BYTES: Final = 32 * 1024
#: when the conversation outgrows ``context_tokens``, the server drops the oldest turns down to this share of it
#: (dropping to half at a time, rather than one turn each time, keeps the cached prefix stable for longer)
RETENTION_RATIO: Final = 0.5


class _Missing(Exception):
    pass


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise _Missing(".".join(path))
        obj = obj[key]
    return obj


def _str(obj: Any, *path: str) -> str:
    value = _get(obj, *path)
    if not isinstance(value, str):
        raise _Missing(".".join(path) + " (not a string)")
    return value


def _opt(obj: Any, *path: str) -> Any:
    try:
        return _get(obj, *path)
    except _Missing:
        return None


def _session_created(d: dict[str, Any]) -> ev.Input:
    expires = _opt(d, "session", "expires_at")
    return ev.SessionCreated(
        session_id=_str(d, "session", "id"),
        expires_at_s=float(expires) if isinstance(expires, (int, float)) and expires > 0 else None,
    )


def _session_updated(d: dict[str, Any]) -> ev.Input:
    session = _get(d, "session")
    if not isinstance(session, dict):
        raise _Missing("session (not an object)")
    return ev.SessionUpdated(turn_detection=_opt(session, "audio", "input", "turn_detection"))


def _audio_delta(d: dict[str, Any]) -> ev.Input:
    text = _str(d, "delta")
    if len(text) > _MAX_DELTA_B64_CHARS:  # judged before decoding: the audio is never made
        ms = samples_to_ms(len(text) * 3 // 4 // BYTES_PER_SAMPLE)
        return ev.BadEvent("response.output_audio.delta", "too_much_audio",
                           f"{ms} ms of audio in one delta, more than {MAX_DELTA_MS} ms")
    try:
        pcm = b64_to_pcm(text)
    except ValueError as exc:
        return ev.BadEvent("response.output_audio.delta", "bad_audio", str(exc))
    return ev.AudioDelta(response_id=_str(d, "response_id"), item_id=_str(d, "item_id"), pcm=pcm)


def _response_done(d: dict[str, Any]) -> ev.Input:
    response = _get(d, "response")
    usage = _opt(response, "usage")
    reason = _opt(response, "status_details", "reason")
    return ev.ResponseDone(
        response_id=_str(response, "id"),
        status=_str(response, "status"),
        reason=reason if isinstance(reason, str) else None,
        usage=usage if isinstance(usage, dict) else None,
    )


def _error(d: dict[str, Any]) -> ev.Input:
    err = d.get("error")
    err = err if isinstance(err, dict) else {}

    def text(key: str) -> str | None:
        value = err.get(key)
        return value if isinstance(value, str) else None

    return ev.ServerError(
        code=text("code"), message=text("message") or "(no message)", error_type=text("type"),
        event_id=text("event_id"),
    )


def _output_item_done(d: dict[str, Any]) -> ev.Input:
    """A finished output item: a function call is a ``ToolCall``, run only when completed (one cut short by a
    cancel or a cap is answered, never run: reference model-features §1.5); any other item changes nothing."""
    item = _get(d, "item")
    if not isinstance(item, dict) or item.get("type") != "function_call":
        return ev.ServerEvent("response.output_item.done")
    return ev.ToolCall(response_id=_str(d, "response_id"), item_id=_str(item, "id"), call_id=_str(item, "call_id"),
                       name=_str(item, "name"), arguments=_str(item, "arguments"),
                       complete=item.get("status") == "completed")


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ev.Input]]] = {
    "response.output_item.done": _output_item_done,
    "conversation.item.added": lambda d: ev.ItemAdded(item_id=_str(d, "item", "id")),
    "conversation.item.created": lambda d: ev.ItemAdded(item_id=_str(d, "item", "id")),  # the docs' older name
    "session.created": _session_created,
    "session.updated": _session_updated,
    "input_audio_buffer.committed": lambda d: ev.InputCommitted(item_id=_str(d, "item_id")),
    "response.created": lambda d: ev.ResponseCreated(response_id=_str(d, "response", "id")),
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": lambda d: ev.AudioDone(response_id=_str(d, "response_id"), item_id=_str(d, "item_id")),
    "response.output_audio_transcript.done": lambda d: ev.TranscriptDone(
        response_id=_str(d, "response_id"), item_id=_str(d, "item_id"), transcript=_str(d, "transcript")
    ),
    "response.done": _response_done,
    "conversation.item.truncated": lambda d: ev.ItemTruncated(
        item_id=_str(d, "item_id"), audio_end_ms=int(_get(d, "audio_end_ms"))
    ),
    "error": _error,
}


def parse_server_event(frame: str | bytes) -> ev.Input:
    """Parse one WebSocket frame from the server into a typed input. Never raises. Server events are JSON text
    frames: a binary frame (``bytes``) is a bad event and is not decoded."""
    if not isinstance(frame, str):
        return ev.BadEvent("(binary)", "binary", f"a binary frame of {len(frame)} bytes")
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        return ev.BadEvent("(unparsed)", "not_json", str(exc))
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return ev.BadEvent("(unparsed)", "not_an_event", "not an object with a string 'type'")
    kind: str = data["type"]
    parser = _PARSERS.get(kind)
    if parser is None:
        return ev.ServerEvent(kind) if kind in ACKNOWLEDGED else ev.Unknown(kind)
    try:
        return parser(data)
    except _Missing as exc:
        return ev.BadEvent(kind, "missing_field", str(exc))
    except (TypeError, ValueError, OverflowError) as exc:
        return ev.BadEvent(kind, "bad_field", str(exc))


class Downsampler(Protocol):
    """A streaming 24 kHz → 8 kHz PCM16 resampler (``soxr.ResampleStream(24000, 8000, 1, dtype="int16")``; the
    core never imports soxr, the adapter hands the encoder a factory)."""

    def resample_chunk(self, x: Pcm, last: bool = False) -> Pcm: ...


class RealtimeEncoder:
    """Intentions → GA Realtime client events (JSON-ready dicts), for the WebSocket transport.

    Each event gets a unique ``event_id`` so a server ``error`` can name it; an intention that carries a ``ref``
    (``ConfigureSession``, ``RequestReply``) uses it as the event id, so the core can tell which of its requests
    the error answers. ``ClearOutput`` is a WebRTC/SIP event: over a WebSocket the client owns its output buffer,
    so it encodes to nothing.

    A session configured with ``input_format="pcmu"`` gets each appended 24 kHz chunk resampled to 8 kHz by one
    stream per question (``downsampler()``, fresh at ``StartQuestion``: chunk boundaries do not click) and
    µ-law encoded; ``Commit`` first flushes the stream's tail, so the server holds all the question's audio."""

    def __init__(self, prefix: str = "evt", downsampler: Callable[[], Downsampler] | None = None) -> None:
        self._prefix = prefix
        self._count = 0
        self._downsampler = downsampler
        self._input_format: InputFormat = "pcm16"
        self._stream: Downsampler | None = None

    @property
    def bytes_per_ms(self) -> float:
        """What one ms of the question costs in an append's base64: 64 bytes as PCM16 at 24 kHz, 10.7 as µ-law."""
        samples_per_ms = API_RATE_HZ / 1000 if self._input_format == "pcm16" else 8
        sample_bytes = BYTES_PER_SAMPLE if self._input_format == "pcm16" else 1
        return samples_per_ms * sample_bytes * 4 / 3

    def _append(self, pcm: Pcm, last: bool = False) -> list[dict[str, Any]]:
        if self._input_format == "pcm16":
            return [self._event("input_audio_buffer.append", audio=pcm_to_b64(pcm))] if not last else []
        if self._stream is None:
            if last:
                return []
            if self._downsampler is None:
                raise ValueError("audio.input_format pcmu needs a downsampler (24 kHz → 8 kHz)")
            self._stream = self._downsampler()
        narrow = self._stream.resample_chunk(pcm, last=last)
        if last:
            self._stream = None
        if not narrow.size:
            return []
        return [self._event("input_audio_buffer.append",
                            audio=base64.b64encode(ulaw_encode(narrow).tobytes()).decode("ascii"))]

    def _event(self, kind: str, ref: str | None = None, **fields: Any) -> dict[str, Any]:
        if ref is None:
            self._count += 1
            ref = f"{self._prefix}_{self._count}"
        return {"type": kind, "event_id": ref, **fields}

    def encode(self, intent: ev.Intent) -> list[dict[str, Any]]:
        match intent:
            case ev.ConfigureSession(ref, voice, instructions, tools, context_tokens, max_output_tokens,
                                     input_format):
                self._input_format, self._stream = input_format, None
                return [self._event("session.update", ref, session=session_config(
                    voice, instructions, tools, context_tokens, max_output_tokens, input_format))]
            case ev.StartQuestion():
                self._stream = None
                return [self._event("input_audio_buffer.clear")]
            case ev.AppendAudio(pcm):
                return self._append(pcm)
            case ev.Commit():
                tail = self._append(np.zeros(0, dtype=np.int16), last=True)
                return [*tail, self._event("input_audio_buffer.commit")]
            case ev.RequestReply(ref, True):
                return [self._event("response.create", ref)]
            case ev.RequestReply(ref, False):
                return [self._event("response.create", ref, response={"tool_choice": "none"})]
            case ev.CancelReply(None):
                return [self._event("response.cancel")]
            case ev.CancelReply(response_id):
                return [self._event("response.cancel", response_id=response_id)]
            case ev.Truncate(item_id, audio_end_ms):
                return [self._event("conversation.item.truncate", item_id=item_id, content_index=0,
                                    audio_end_ms=audio_end_ms)]
            case ev.ClearOutput():
                return []
            case ev.ReturnToolOutput(call_id, output):
                return [self._event("conversation.item.create",
                                    item={"type": "function_call_output", "call_id": call_id, "output": output})]
            case ev.DeleteItem(item_id):
                return [self._event("conversation.item.delete", item_id=item_id)]
        raise TypeError(f"not an intention: {intent!r}")


def session_config(voice: str, instructions: str, tools: tuple[ToolSpec, ...] = (),
                   context_tokens: int | None = None, max_output_tokens: int | None = None,
                   input_format: InputFormat = "pcm16") -> dict[str, Any]:
    """Push-to-talk GA session: PCM 24 kHz both ways (or, with ``input_format="pcmu"``, G.711 µ-law 8 kHz in),
    no turn detection (the button is the turn); the exhibit's
    function tools (``tool_choice`` auto: the model decides, the instructions say when); and, with
    ``context_tokens``, a truncation that keeps the conversation after the instructions within it (the server
    drops the oldest turns; model-features §4.2)."""
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": instructions,
        "audio": {
            "input": {"format": dict(INPUT_FORMATS[input_format]), "turn_detection": None},
            "output": {"format": dict(AUDIO_FORMAT), "voice": voice},
        },
        "tools": [{"type": "function", "name": t.name, "description": t.description,
                   "parameters": json.loads(t.parameters_json)} for t in tools],
        "tool_choice": "auto",
    }
    if max_output_tokens is not None:  # bounds one reply (audio, text and tool calls): its cost too
        session["max_output_tokens"] = max_output_tokens
    if context_tokens is not None:
        session["truncation"] = {"type": "retention_ratio", "retention_ratio": RETENTION_RATIO,
                                 "token_limits": {"post_instructions": context_tokens}}
    return session
