"""Runs the tools the model calls: the exhibit's knowledge lookup and opening hours here, ``http`` tools on the
museum's own systems (httpx). The core says ``RunTool`` / ``CancelTool``; each run is a task this runner owns
(cancelled and awaited by ``cancel`` / ``close``), and its answer comes back as a ``ToolResult`` input.

Whatever happens, a run answers with JSON text for the model, at most ``OUTPUT_MAX_CHARS``: a tool that fails,
is slow or returns junk says so in its output (``{"error": ...}``), so the model can tell the visitor instead of
waiting. A failing tool is logged once (``tool.failed``, with its cause) until it works again
(``tool.recovered``); the rest of its failures are debug lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import httpx

from kioskd import log as log_mod
from kioskd.core import events as ev
from kioskd.core.guide import HOURS, LOOKUP
from kioskd.core.knowledge import Knowledge
from kioskd.exhibit import HttpTool, Tools

#: what the model is given of one answer (it is billed as input tokens, every turn after)
OUTPUT_MAX_CHARS: Final = 4000
#: what is read of an http tool's response body
RESPONSE_MAX_BYTES: Final = 64 * 1024


class ToolError(Exception):
    """A tool could not answer; the message is said to the model (and logged)."""


class ToolRunner:
    def __init__(self, post: Callable[[ev.Input], None], *, knowledge: Knowledge | None = None,
                 tools: Tools | None = None, now: Callable[[], datetime] = datetime.now,
                 log: log_mod.Logger | None = None) -> None:
        self._post = post
        self._now = now
        self._log = log or log_mod.get_logger("kioskd.tools")
        self._knowledge = knowledge
        self._tools = tools or Tools()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()
        self._client: httpx.AsyncClient | None = None

    def update(self, *, knowledge: Knowledge | None, tools: Tools) -> None:
        """A reload: later calls use the new files (runs under way finish with the old ones)."""
        self._knowledge, self._tools = knowledge, tools

    def start(self, call_id: str, name: str, arguments: str) -> None:
        task = asyncio.create_task(self._run(call_id, name, arguments), name=f"tool-{name}")
        self._runs[call_id] = task
        task.add_done_callback(lambda t: self._runs.pop(call_id, None) if self._runs.get(call_id) is t else None)

    async def cancel(self, call_id: str) -> None:
        task = self._runs.pop(call_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for call_id in list(self._runs):
            await self.cancel(call_id)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------------------------------------ running

    async def _run(self, call_id: str, name: str, arguments: str) -> None:
        """Every run answers its call: a failure of any kind (a ToolError, or arguments the HTTP client cannot
        encode) becomes an error output; only a cancel (CancelTool: its turn is over) answers nothing."""
        try:
            output = await self._answer(name, arguments)
        except ToolError as exc:
            self._failed(name, str(exc))
            output = json.dumps({"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - whatever it was, the model must hear back
            self._failed(name, f"{type(exc).__name__}: {exc}"[:200])
            output = json.dumps({"error": "the tool failed"})
        else:
            if name in self._failing:
                self._failing.discard(name)
                self._log.info("tool.recovered", name=name)
        if len(output) > OUTPUT_MAX_CHARS:
            output = json.dumps({"result": output[:OUTPUT_MAX_CHARS - 100], "note": "cut short"})
        self._post(ev.ToolResult(call_id, output))

    def _failed(self, name: str, cause: str) -> None:
        if not self._known(name):
            name = "(unknown tool)"  # the model's word, not one of ours: never kept or logged as it is
        if name in self._failing:
            self._log.debug("tool.failed", name=name, cause=cause)
            return
        self._failing.add(name)
        self._log.warning("tool.failed", name=name, cause=cause)

    def _known(self, name: str) -> bool:
        return ((name == LOOKUP.name and self._knowledge is not None) or (name == HOURS.name and self._tools.hours
                is not None) or any(t.name == name for t in self._tools.http))

    async def _answer(self, name: str, arguments: str) -> str:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise ToolError("the arguments are not JSON") from None
        if not isinstance(args, dict):
            raise ToolError("the arguments are not a JSON object")
        if name == LOOKUP.name and self._knowledge is not None:
            query = args.get("query")
            found = await asyncio.to_thread(self._knowledge.answer, query if isinstance(query, str) else "")
            return json.dumps(found)  # the lookup ran in a thread: a large file's fuzzy search never holds the loop
        if name == HOURS.name and self._tools.hours is not None:
            return json.dumps(self._tools.hours.answer(self._now()))
        tool = next((t for t in self._tools.http if t.name == name), None)
        if tool is None:
            raise ToolError(f"there is no tool called {name[:64]!r}")
        return await self._http(tool, args)

    async def _http(self, tool: HttpTool, args: dict[str, Any]) -> str:
        """POST the arguments as JSON to the museum's system; its JSON answer (or its text, quoted) is the
        output. Slow, unreachable or failing: a ToolError saying so."""
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        try:
            async with asyncio.timeout(tool.timeout_s):
                async with self._client.stream("POST", tool.url, json=args, timeout=tool.timeout_s) as response:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > RESPONSE_MAX_BYTES:
                            raise ToolError(f"the answer is over {RESPONSE_MAX_BYTES // 1024} KiB")
        except TimeoutError:
            raise ToolError(f"no answer within {tool.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot reach it: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise ToolError(f"it answered HTTP {response.status_code}")
        text = body.decode("utf-8", errors="replace")
        try:
            return json.dumps(json.loads(text))
        except (ValueError, RecursionError):
            return json.dumps({"result": text})
