"""The fallback backend: Chat Completions audio over HTTP (httpx), one streamed request per reply.

A ``ChatLink`` takes the same intentions as the Realtime link (``executor.Link``) and reports the same inputs, so
the turn machine answers a visitor through it with the rows it uses for Realtime. The codec and the visitor's
client-side conversation are pure (``core/chat.py``); this adapter only moves bytes: it POSTs each request,
reads the event stream as it comes and posts what the codec makes of it. Each reply is a task it owns, cancelled
(the stream closed: a barge-in, a cap) and awaited by ``send(CancelReply)`` / ``close``. Whatever ends a reply
(the stream's end, a cancel, an HTTP error, a broken connection, a chunk kioskd cannot use) ends it with exactly
one ``ResponseDone``, whose ``reason`` names the cause.

httpx, not the openai SDK: httpx is already kioskd's HTTP client (the exhibit's http tools), and the SDK would
bring pydantic and its own client to a 192 MB service for a request kioskd builds and a stream it reads in a
few lines (docs/architecture.md, "The fallback").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from kioskd.adapters import realtime_ws
from kioskd.core import events as ev
from kioskd.core.chat import BadChunk, ChatConversation, ChatReply, ChatRequest, SseDecoder

#: what is read of an error response's body (for the reason its turn gives)
ERROR_BODY_MAX_BYTES: Final = 16 * 1024
#: statuses that say the fallback cannot work as configured (a bad key, no access, no such model or deployment):
#: it is down until a reload, and presses hear the offline prompt instead of an apology each
FATAL_STATUSES: Final = frozenset({401, 403, 404})
#: the bytes are read as they came (no Content-Encoding): a compressed body could inflate past every bound
HEADERS: Final = {"Accept-Encoding": "identity"}


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """Where and how to ask: ``url`` is a Chat Completions base URL (OpenAI's ``…/v1``, or an Azure deployment's
    ``…/openai/deployments/<name>?api-version=…``); ``/chat/completions`` is added to its path."""

    url: str
    request: ChatRequest
    auth: realtime_ws.Auth = "auto"
    api_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    """The longest wait for the next bytes of a reply (a stalled stream ends as failed, with the apology)."""


def completions_url(base: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/chat/completions", parts.query, ""))


class ChatLink:
    """The fallback backend. ``options`` is read at each request, so a reload applies to the next reply."""

    def __init__(self, options: Callable[[], ChatOptions], post: Callable[[ev.Input], None]) -> None:
        self._options = options
        self._post = post
        self._conversation = ChatConversation()
        self._replies: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)

    def send(self, intent: ev.Intent) -> None:
        c = self._conversation
        match intent:
            case ev.StartQuestion():
                c.start_question()
            case ev.AppendAudio(pcm):
                c.append(pcm)
            case ev.Commit():
                c.commit()
            case ev.RequestReply(_, tools):
                self._ask(tools)
            case ev.CancelReply(response_id):
                for rid, task in self._replies.items():
                    if response_id is None or rid == response_id:
                        task.cancel()
            case ev.Truncate(item_id, audio_end_ms):
                c.truncate(item_id, audio_end_ms)
            case ev.ReturnToolOutput(call_id, output):
                c.tool_output(call_id, output)
            case ev.DeleteItem(item_id):
                c.delete(item_id)
            case _:  # the session's configuration, clearing server-side output: nothing to do here
                pass

    async def close(self) -> None:
        self._closed = True
        for task in list(self._replies.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------------------------------ one reply

    def _ask(self, tools: bool) -> None:
        n = next(self._ids)
        options = self._options()
        reply, body = self._conversation.reply(options.request, f"chat_resp_{n}", f"chat_item_{n}", tools=tools)
        self._post(ev.ResponseCreated(reply.response_id, backend="chat"))
        if self._closed or self._client is None:
            self._post_all(reply.cut("failed", "the fallback link is closed", billed=False))
            return
        task = asyncio.create_task(self._stream(options, reply, body), name="chat-reply")
        self._replies[reply.response_id] = task

        def ended(_: asyncio.Task[None]) -> None:  # a task cancelled before it first ran never entered _stream
            self._replies.pop(reply.response_id, None)
            self._post_all(reply.cut("cancelled", billed=False))

        task.add_done_callback(ended)

    async def _stream(self, options: ChatOptions, reply: ChatReply, body: dict[str, object]) -> None:
        """POST, then read the stream to its end; every way out posts the reply's one ResponseDone."""
        assert self._client is not None
        headers = {**HEADERS, **realtime_ws.auth_headers(options.url, options.auth, options.api_key)}
        timeout = httpx.Timeout(options.read_timeout_s, connect=options.connect_timeout_s)
        billed = False
        try:
            async with self._client.stream("POST", completions_url(options.url), json=body, headers=headers,
                                           timeout=timeout) as response:
                if response.status_code != 200:
                    reason = await _error_reason(response)
                    self._post_all(reply.cut("failed", reason, billed=False))
                    if response.status_code in FATAL_STATUSES:
                        self._post(ev.Availability("chat", False, "fault", reason))
                    return
                kind = response.headers.get("content-type", "")
                if not kind.startswith("text/event-stream"):  # a proxy's or a portal's page: not the service
                    self._post_all(reply.cut("failed", f"not an event stream: {kind[:60]!r}", billed=False))
                    return
                billed = True
                decoder = SseDecoder()
                async for data in response.aiter_raw():
                    for payload in decoder.feed(data):
                        if payload == "[DONE]":
                            self._post_all(reply.finish())
                            return
                        self._post_all(reply.feed(json.loads(payload)))
            if reply.finish_reason is not None:  # the body ended without [DONE], after its last choice
                self._post_all(reply.finish())
            else:
                self._post_all(reply.cut("failed", "the stream ended before its answer did (no [DONE])"))
        except asyncio.CancelledError:
            self._post_all(reply.cut("cancelled", billed=billed))
            raise
        except (BadChunk, ValueError, RecursionError) as exc:
            self._post_all(reply.cut("failed", f"bad stream: {str(exc)[:200]}"))
        except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL) as exc:
            self._post_all(reply.cut("failed", f"{type(exc).__name__}: {exc}"[:300], billed=billed))
        except Exception as exc:  # noqa: BLE001 - whatever it was, the turn must hear its reply ended
            self._post_all(reply.cut("failed", f"{type(exc).__name__}: {exc}"[:300], billed=billed))

    def _post_all(self, inputs: list[ev.Input]) -> None:
        for inp in inputs:
            self._post(inp)


async def _error_reason(response: httpx.Response) -> str:
    """``HTTP 401 invalid_api_key: <the service's message>`` from an error response (its body read bounded)."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > ERROR_BODY_MAX_BYTES:
            break
    code, message = "", ""
    with contextlib.suppress(ValueError, RecursionError):
        parsed = json.loads(bytes(body[:ERROR_BODY_MAX_BYTES]))
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            code, message = str(error.get("code") or error.get("type") or ""), str(error.get("message") or "")
    return f"HTTP {response.status_code}" + (f" {code}" if code else "") + (f": {message[:200]}" if message else "")
