"""One Realtime session over a WebSocket: the link object the executor drives.

A ``RealtimeLink`` owns everything of one session: the socket, the reader and writer tasks, the outbox and the
encoder that turns the core's intentions into GA Realtime events. It reports each server frame as a parsed input
through ``post``, and it ends in exactly one ``Disconnected`` — whether the handshake failed, the server closed,
keepalive gave up or the outbox filled — unless kioskd closed it first: after ``close()`` it reports nothing,
so a late event from a replaced session never reaches the machine. Its tasks are its own and are awaited when
it closes (as websockets' ``asyncio/connection.py`` owns its keepalive task).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Final

from websockets.asyncio.client import ClientConnection

from kioskd.adapters import realtime_ws
from kioskd.adapters.resample import uplink_downsampler
from kioskd.core import events as ev
from kioskd.core.realtime import RealtimeEncoder, parse_server_event
from kioskd.errors import ConnectionLost

#: frames waiting for the network; past this the link is stalled (~10 s of microphone appends)
OUTBOX_FRAMES: Final = 256
CLOSE_TIMEOUT_S: Final = 2.0


@dataclasses.dataclass(frozen=True)
class LinkOptions:
    url: str
    auth: realtime_ws.Auth = "auto"
    api_key: str | None = None
    connect_timeout_s: float = 10.0
    keepalive_s: float = 20.0


class RealtimeLink:
    """One session. ``start()`` opens it in the background; ``send(intent)`` never waits; ``close()`` ends it."""

    def __init__(self, options: LinkOptions, post: Callable[[ev.Input], None]) -> None:
        self._options = options
        self._post = post
        self._encoder = RealtimeEncoder(downsampler=uplink_downsampler)
        self._outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_FRAMES)
        self._conn: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ended = False
        self._outbox_bytes = 0  # what the outbox holds, for the uplink's backlog

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-link")

    def send(self, intent: ev.Intent) -> None:
        """Queue the intention's events for the writer. A full outbox means the network has stalled: the
        session ends as lost rather than letting audio pile up."""
        if self._closing or self._ended:
            return
        for event in self._encoder.encode(intent):
            frame = json.dumps(event)
            try:
                self._outbox.put_nowait(frame)
            except asyncio.QueueFull:
                self._end(ConnectionLost(None, f"send queue full ({OUTBOX_FRAMES} frames): network stalled"))
                if self._task is not None:
                    self._task.cancel()
                return
            self._outbox_bytes += len(frame)
        if isinstance(intent, ev.Commit) and self._conn is not None:
            # the question is all queued: what of it has not reached the server yet (the commit's own few bytes
            # aside) says whether the uplink keeps up (audio.input_format auto; the link machine decides)
            behind = self._outbox_bytes + realtime_ws.unsent_bytes(self._conn.transport)
            self._deliver(ev.UplinkBacklog(round(behind / self._encoder.bytes_per_ms)))

    async def close(self) -> None:
        """Close normally (code 1000) and wait for the session's tasks; nothing is reported after this."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(1000), CLOSE_TIMEOUT_S)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _end(self, cause: BaseException) -> None:
        """Report the one Disconnected, unless kioskd closed the session or it was reported already."""
        if self._closing or self._ended:
            return
        self._ended = True
        self._post(ev.Disconnected(cause))

    def _deliver(self, inp: ev.Input) -> None:
        if not (self._closing or self._ended):
            self._post(inp)

    async def _run(self) -> None:
        o = self._options
        try:
            conn = await realtime_ws.open_session(o.url, auth=o.auth, api_key=o.api_key,
                                                  open_timeout_s=o.connect_timeout_s, keepalive_s=o.keepalive_s)
        except Exception as exc:  # every failure becomes an input: the machine decides what it means
            self._end(exc)
            return
        self._conn = conn
        self._deliver(ev.Connected())
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._write(conn), name="realtime-writer")
                await self._read(conn)
        except* Exception as failed:
            self._end(failed.exceptions[0])
        finally:
            if self._ended:  # the outbox filled or the reader ended: do not leave the socket half open
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(1011), CLOSE_TIMEOUT_S / 4)

    async def _read(self, conn: ClientConnection) -> None:
        async for frame in realtime_ws.frames(conn):  # always ends by raising ConnectionLost
            inp = parse_server_event(frame)
            if isinstance(inp, ev.SessionCreated) and inp.expires_at_s is not None:
                inp = dataclasses.replace(inp, expires_in_s=inp.expires_at_s - time.time())
            self._deliver(inp)

    async def _write(self, conn: ClientConnection) -> None:
        while True:
            frame = await self._outbox.get()
            self._outbox_bytes -= len(frame)
            await realtime_ws.send(conn, frame)
