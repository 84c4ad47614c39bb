"""The Chat Completions audio codec: the visitor's question and conversation → one request; the streamed chunks →
the inputs a Realtime reply gives. Pure.

Written from shared/reference/model-features.md §2.4 and §3. Chat Completions keeps no conversation, so this
module keeps the visitor's: the guide's earlier answers as their transcripts (the visitor's own words have no
free transcript; their audio is sent once, with its question), and the present turn's tool calls and outputs.
Each answer kept is an item with an id, announced as ``ItemAdded`` and removed by ``DeleteItem``, so the turn
machine empties it for a new visitor exactly as it empties a Realtime session's conversation; a barge-in's
``Truncate`` cuts an answer's transcript to the share the visitor heard.

One reply is one streamed request (``stream: true``, pcm16 out, ``stream_options.include_usage``): ``ChatReply``
reads its chunks into ``AudioDelta`` and ``ToolCall`` inputs and ends it with ``AudioDone`` and ``ResponseDone``.
A stream that ends without its usage chunk (a barge-in closed it, the connection broke) is billed from what was
sent and received, at the reference's rates (§2.2), and marked ``"estimated": true``: the service bills it all
the same, and a turn must not look free. Everything a server sends is bounded: the SSE framing (``SseDecoder``,
the few rules of the text/event-stream format that httpx leaves to its caller), one audio chunk, the transcript,
the tool calls; a chunk that breaks the shape ends the reply as failed (``BadChunk``), never the daemon.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import wave
from dataclasses import dataclass, field
from typing import Any, Final

from kioskd.core import events as ev
from kioskd.core.pcm import API_RATE_HZ, BYTES_PER_SAMPLE, Batch, Pcm, b64_to_pcm, ms_to_samples, samples_to_ms
from kioskd.core.realtime import MAX_DELTA_MS
from kioskd.core.settings import ToolSpec

#: the longest SSE line, and event, (bytes) kioskd accepts: one audio chunk of MAX_DELTA_MS is ~128 KB of base64
MAX_LINE_BYTES: Final = 512 * 1024
_EOL: Final = re.compile(rb"\r\n|\r|\n")
#: the longest question uploaded (ms of held audio; the hold cap is 30 s by default)
MAX_QUESTION_MS: Final = 120_000
#: an answer's transcript is kept up to this many characters (the conversation re-sends it every turn)
MAX_TRANSCRIPT_CHARS: Final = 4000
#: tool calls one reply may make, and the JSON text of one call's arguments
MAX_CALLS: Final = 8
MAX_ARGUMENTS_CHARS: Final = 16 * 1024
#: answers kept (the Realtime side keeps core/conversation.MAX_ITEMS ids; this keeps their text)
MAX_ANSWERS: Final = 50
#: tokens per second of audio and characters per text token, for a reply billed without its usage (§2.2)
AUDIO_IN_TOKENS_PER_S: Final = 10
AUDIO_OUT_TOKENS_PER_S: Final = 20
CHARS_PER_TOKEN: Final = 4
_B64_MAX: Final = -(-ms_to_samples(MAX_DELTA_MS) * BYTES_PER_SAMPLE // 3) * 4


class BadChunk(ValueError):
    """A chunk (or an SSE line) kioskd cannot use: the reply ends as failed with this as its reason."""


def wav(pcm: Pcm) -> bytes:
    """24 kHz mono PCM16 in a RIFF/WAV container (Chat Completions takes wav or mp3, never bare pcm16)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(BYTES_PER_SAMPLE)
        w.setframerate(API_RATE_HZ)
        w.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What every request says besides the conversation."""

    model: str
    voice: str
    instructions: str
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None


class SseDecoder:
    """The ``data:`` payloads of a text/event-stream, fed bytes as they arrive (WHATWG HTML §9.2.6: events end at
    a blank line, ``data`` lines join with newlines, one leading space is dropped, comments and other fields are
    skipped). Each byte is scanned once. Raises ``BadChunk`` for a line or an event over ``MAX_LINE_BYTES``, or
    more lines in one read than its bytes could hold as events (a flood of blank lines is cheap to send)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._size = 0  # of the event being read

    def feed(self, chunk: bytes) -> list[str]:
        buf, start, out = self._buf + chunk, 0, list[str]()
        for m in _EOL.finditer(buf):
            if m.group() == b"\r" and m.end() == len(buf):
                break  # a CR at the end of what came: its LF may follow in the next read
            self._line(buf[start:m.start()], out)
            start = m.end()
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE_BYTES:
            raise BadChunk(f"an event-stream line over {MAX_LINE_BYTES} bytes")
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        if not line:
            if self._data:
                out.append("\n".join(self._data))
            self._data, self._size = [], 0
            return
        if len(line) > MAX_LINE_BYTES or self._size + len(line) > MAX_LINE_BYTES:
            raise BadChunk(f"an event-stream event over {MAX_LINE_BYTES} bytes")
        if line.startswith(b"data:"):
            value = line[5:].decode("utf-8", "replace")
            self._data.append(value[1:] if value.startswith(" ") else value)
            self._size += len(line)


@dataclass
class _Call:
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChatReply:
    """One streamed reply: ``feed`` each chunk (parsed JSON), then ``finish`` at ``[DONE]``, or ``cut`` when the
    stream was cancelled or broke. Each returns the inputs for the turn."""

    conversation: ChatConversation
    response_id: str
    item_id: str
    question_ms: int
    text_chars: int  # text sent in the request (instructions, earlier answers, tools): for an estimate
    transcript: str = ""
    received_samples: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    calls: dict[int, _Call] = field(default_factory=dict)
    ended: bool = False

    def feed(self, chunk: Any) -> list[ev.Input]:
        if not isinstance(chunk, dict):
            raise BadChunk("a chunk that is not a JSON object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            error = chunk.get("error")
            if isinstance(error, dict):  # the service's error, inside the stream
                raise BadChunk(f"the service's error {str(error.get('code') or error.get('type') or '')[:64]}: "
                               f"{str(error.get('message') or '')[:200]}")
            raise BadChunk("a chunk without a choices list")
        out: list[ev.Input] = []
        for choice in choices[:1]:
            if not isinstance(choice, dict):
                raise BadChunk("a choice that is not an object")
            delta = choice.get("delta") or {}  # Azure's content-filter chunks carry none
            if not isinstance(delta, dict):
                raise BadChunk("a choice whose delta is not an object")
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
            out += self._audio(delta.get("audio"))
            self._tool_calls(delta.get("tool_calls"))
        return out

    def _audio(self, audio: Any) -> list[ev.Input]:
        if audio is None:
            return []
        if not isinstance(audio, dict):
            raise BadChunk("delta.audio is not an object")
        transcript, data = audio.get("transcript"), audio.get("data")
        if isinstance(transcript, str) and len(self.transcript) < MAX_TRANSCRIPT_CHARS:
            self.transcript = (self.transcript + transcript)[:MAX_TRANSCRIPT_CHARS]
        if data is None or data == "":
            return []
        if not isinstance(data, str) or len(data) > _B64_MAX:
            raise BadChunk(f"delta.audio.data is not base64 pcm16 of at most {MAX_DELTA_MS} ms")
        try:
            pcm = b64_to_pcm(data)
        except ValueError as exc:
            raise BadChunk(str(exc)) from None
        self.received_samples += pcm.size
        return [ev.AudioDelta(self.response_id, self.item_id, pcm)]

    def _tool_calls(self, calls: Any) -> None:
        if calls is None:
            return
        if not isinstance(calls, list):
            raise BadChunk("delta.tool_calls is not a list")
        for part in calls:
            index = part.get("index") if isinstance(part, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_CALLS:
                raise BadChunk(f"a tool call without an index below {MAX_CALLS}")
            call = self.calls.setdefault(index, _Call())
            if isinstance(part.get("id"), str):
                call.call_id = part["id"][:200]
            function = part.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call.name += function["name"][:200]
                if isinstance(function.get("arguments"), str):
                    call.arguments += function["arguments"]
                    if len(call.arguments) > MAX_ARGUMENTS_CHARS:
                        raise BadChunk(f"tool call arguments over {MAX_ARGUMENTS_CHARS} characters")

    def finish(self) -> list[ev.Input]:
        """The stream ended with ``[DONE]``: completed, unless its ``finish_reason`` says it was cut short (a
        stream may end on its ``expires_at`` delta with no ``finish_reason`` at all: openai-node#1206)."""
        if self.finish_reason in (None, "stop", "tool_calls"):
            return self._end("completed", None)
        return self._end("incomplete", self.finish_reason)

    def cut(self, status: str, reason: str | None = None, *, billed: bool = True) -> list[ev.Input]:
        """The stream stopped early: ``cancelled`` (a barge-in or a cap closed it) or ``failed`` (``reason``).
        ``billed``: the request reached the service (an HTTP error or a refused connection is not billed)."""
        if self.ended:
            return []
        if not billed:
            self.usage = {}
        return self._end(status, reason)

    def _end(self, status: str, reason: str | None) -> list[ev.Input]:
        self.ended = True
        out: list[ev.Input] = []
        if self.received_samples:
            out.append(ev.AudioDone(self.response_id, self.item_id))
        if status == "completed":
            calls = [c for _, c in sorted(self.calls.items()) if c.call_id and c.name]
            for n, call in enumerate(calls):
                out.append(ev.ToolCall(self.response_id, f"{self.item_id}_call_{n}", call.call_id, call.name,
                                       call.arguments))
            self.conversation.calls_made(self.transcript, [(c.call_id, c.name, c.arguments) for c in calls])
        if self.received_samples and self.transcript and not (status == "completed" and self.calls):
            out.append(self.conversation.answered(self.item_id, self.transcript, samples_to_ms(self.received_samples)))
        usage = self.usage if self.usage is not None else self.estimate()
        return [*out, ev.ResponseDone(self.response_id, status, reason, usage)]

    def estimate(self) -> dict[str, Any]:
        """A ``CompletionUsage`` from what was sent and received (§2.2's rates), marked as estimated."""
        audio_in = math.ceil(self.question_ms * AUDIO_IN_TOKENS_PER_S / 1000)
        text_in = math.ceil(self.text_chars / CHARS_PER_TOKEN)
        audio_out = math.ceil(samples_to_ms(self.received_samples) * AUDIO_OUT_TOKENS_PER_S / 1000)
        text_out = math.ceil((len(self.transcript) + sum(len(c.arguments) for c in self.calls.values()))
                             / CHARS_PER_TOKEN)
        return {"prompt_tokens": audio_in + text_in, "completion_tokens": audio_out + text_out,
                "total_tokens": audio_in + text_in + audio_out + text_out,
                "prompt_tokens_details": {"audio_tokens": audio_in, "text_tokens": text_in},
                "completion_tokens_details": {"audio_tokens": audio_out, "text_tokens": text_out},
                "estimated": True}


@dataclass
class _Answer:
    transcript: str
    heard_of_ms: int  # how much audio the transcript spoke (for a barge-in's cut)


class ChatConversation:
    """The visitor's conversation, kept for a backend that keeps none. The adapter feeds it the turn's intentions
    and asks it for each request body; ids it announces (``ItemAdded``) are the turn machine's to delete."""

    def __init__(self) -> None:
        self._answers: dict[str, _Answer] = {}
        self._cuts: dict[str, int] = {}  # truncates that came before their answer was kept (its stream was ending)
        self._question = Batch()
        self._wav: str | None = None  # the committed question, base64 WAV
        self._question_ms = 0
        self._exchange: list[dict[str, Any]] = []  # this turn's tool calls and their outputs

    # ---------------------------------------------------------------------------------------- the turn's intents

    def start_question(self) -> None:
        self._question.take()
        self._wav, self._question_ms, self._exchange = None, 0, []
        self._cuts.clear()

    def append(self, pcm: Pcm) -> None:
        if samples_to_ms(self._question.samples + pcm.size) <= MAX_QUESTION_MS:
            self._question.add(pcm)

    def commit(self) -> None:
        pcm = self._question.take()
        if pcm is not None:
            self._wav = base64.b64encode(wav(pcm)).decode("ascii")
            self._question_ms = samples_to_ms(pcm.size)

    def tool_output(self, call_id: str, output: str) -> None:
        self._exchange.append({"role": "tool", "tool_call_id": call_id, "content": output})

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The visitor heard ``audio_end_ms`` of the answer: keep that share of its transcript (at a word)."""
        answer = self._answers.get(item_id)
        if answer is None:
            self._cuts[item_id] = audio_end_ms  # its reply is still ending: applied when it is kept
            return
        if answer.heard_of_ms <= 0 or audio_end_ms >= answer.heard_of_ms:
            return
        keep = len(answer.transcript) * max(audio_end_ms, 0) // answer.heard_of_ms
        cut = answer.transcript[:keep]
        if keep < len(answer.transcript) and " " in cut:
            cut = cut[:cut.rindex(" ")]
        if cut.strip():
            answer.transcript, answer.heard_of_ms = cut + "…", audio_end_ms
        else:
            del self._answers[item_id]

    def delete(self, item_id: str) -> None:
        self._answers.pop(item_id, None)

    # ---------------------------------------------------------------------------------------- replies

    def answered(self, item_id: str, transcript: str, audio_ms: int) -> ev.ItemAdded:
        self._answers[item_id] = _Answer(transcript, audio_ms)
        while len(self._answers) > MAX_ANSWERS:
            del self._answers[next(iter(self._answers))]
        if item_id in self._cuts:
            self.truncate(item_id, self._cuts.pop(item_id))
        return ev.ItemAdded(item_id)

    def calls_made(self, transcript: str, calls: list[tuple[str, str, str]]) -> None:
        if calls:
            self._exchange.append({
                "role": "assistant", "content": transcript or None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                               for call_id, name, args in calls]})

    def reply(self, request: ChatRequest, response_id: str, item_id: str, *,
              tools: bool = True) -> tuple[ChatReply, dict[str, Any]]:
        """A new reply and its request body (``tools=False``: one that may call no tool)."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": request.instructions}]
        messages += [{"role": "assistant", "content": a.transcript} for a in self._answers.values()]
        if self._wav is not None:
            messages.append({"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": self._wav, "format": "wav"}}]})
        messages += self._exchange
        body: dict[str, Any] = {
            "model": request.model, "modalities": ["text", "audio"],
            "audio": {"voice": request.voice, "format": "pcm16"},
            "stream": True, "stream_options": {"include_usage": True}, "messages": messages,
        }
        if request.tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": json.loads(t.parameters_json)}}
                for t in request.tools]
            body["tool_choice"] = "auto" if tools else "none"
        if request.max_output_tokens is not None:
            body["max_completion_tokens"] = request.max_output_tokens
        text_chars = (len(request.instructions) + sum(len(a.transcript) for a in self._answers.values())
                      + sum(len(t.description) + len(t.parameters_json) for t in request.tools)
                      + sum(len(json.dumps(m)) for m in self._exchange))
        return ChatReply(self, response_id, item_id, self._question_ms, text_chars), body
