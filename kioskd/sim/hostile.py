"""A hostile Realtime endpoint on loopback, for the tests and benchmarks that drive kioskd's defences.

It speaks just enough of the GA protocol to be taken for the real service (reference §6): ``session.created`` on
connect, ``session.updated`` answering the client's ``session.update``. What it does after that is an ``attack``,
a coroutine given the connection as a ``Peer``: floods of ``error`` events, frames that are not JSON or not text,
frames far larger than any event needs, a session that differs from the one asked for. Unlike the simulator it
answers nothing else (no input buffer, no responses): the attack decides.

Everything the client sent is kept in ``client_events`` (text frames parsed as JSON), across connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Json = dict[str, Any]
Attack = Callable[["Peer"], Awaitable[None]]


def error_event(code: str, message: str, event_id: str | None = None, kind: str = "invalid_request_error") -> Json:
    """An ``error`` server event (reference §9.1)."""
    return {"type": "error", "event_id": "event_hostile",
            "error": {"type": kind, "code": code, "message": message, "param": None, "event_id": event_id}}


def deflated_frame(text: str) -> bytes:
    """A server text frame compressed with permessage-deflate on its own (it needs no earlier frame), unmasked:
    bytes to write straight to the socket. Valid only if the client agreed to permessage-deflate."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = (deflate.compress(text.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]
    size = bytes([len(data)]) if len(data) < 126 else bytes([126]) + struct.pack("!H", len(data))
    return bytes([0xC1]) + size + data  # FIN, RSV1 (compressed), text


class Peer:
    """One connection as the attack sees it. ``number`` counts connections from 1."""

    def __init__(self, server: HostileServer, ws: ServerConnection, number: int) -> None:
        self.server, self.ws, self.number = server, ws, number
        self._events: asyncio.Queue[Json] = asyncio.Queue()

    async def send(self, event: Json) -> None:
        await self.ws.send(json.dumps(event))

    async def send_raw(self, frame: str | bytes) -> None:
        """A frame as it is: a str goes as a text frame, bytes as a binary frame."""
        await self.ws.send(frame)

    async def event(self, kind: str) -> Json:
        """The next client event of type ``kind`` (earlier ones of other types are passed over)."""
        while True:
            event = await self._events.get()
            if event.get("type") == kind:
                return event

    async def configure(self, turn_detection: Any = None) -> Json:
        """Answer the client's ``session.update`` with ``session.updated``, reporting ``turn_detection`` (null:
        as asked, for push-to-talk). Returns the client's event."""
        update = await self.event("session.update")
        session = {**self.server.session(), **update.get("session", {})}
        session["audio"] = {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": turn_detection},
                            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}
        await self.send({"type": "session.updated", "event_id": "event_updated", "session": session})
        return update


async def configure_only(peer: Peer) -> None:
    await peer.configure()


class HostileServer:
    """``async with HostileServer(attack) as server``: listens on loopback; ``url`` is the endpoint to give kioskd.
    Each connection gets ``session.created``, then ``attack(peer)`` runs while the client's frames are read; the
    connection stays open after the attack until the client closes it or the server closes."""

    def __init__(self, attack: Attack = configure_only) -> None:
        self.attack = attack
        self.connections = 0
        self.client_events: list[Json] = []
        self._server: Server | None = None

    def session(self) -> Json:
        return {"type": "realtime", "object": "realtime.session", "id": f"sess_hostile_{self.connections}",
                "model": "gpt-realtime", "output_modalities": ["audio"], "instructions": "",
                "expires_at": int(time.time()) + 3600}

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HostileServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        peer = Peer(self, ws, self.connections)
        reader = asyncio.create_task(self._read(peer))
        try:
            await peer.send({"type": "session.created", "event_id": "event_created", "session": self.session()})
            await self.attack(peer)
            await reader
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def _read(self, peer: Peer) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in peer.ws:
                with contextlib.suppress(ValueError):
                    event = json.loads(frame)
                    if isinstance(event, dict):
                        self.client_events.append(event)
                        peer._events.put_nowait(event)
