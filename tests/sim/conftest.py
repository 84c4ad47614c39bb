"""Helpers for the simulator's tests: a simulator whose every sent frame is validated at the end, and a scripted
raw client (plain dicts and json.dumps, deliberately not kioskd's codec) that validates what it sends and receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from kioskd.core.pcm import Pcm, b64_to_pcm
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
from tests.conftest import UNIT_S
from tests.realtime_schema import validate_client, validate_server

#: fast delivery, so a whole reply streams in well under a second
FAST: dict[str, Any] = {"voice": "tone", "first_delta_delay_ms": 10.0, "speedup": 50.0, "reply_ms": 1000}


@contextlib.asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[RealtimeSimulator]:
    """A started simulator; on a clean exit every frame it sent (read by a client or not) is validated."""
    async with RealtimeSimulator(SimOptions(**options)) as sim:
        yield sim
    ids = [e["event_id"] for e in sim.server_events]
    assert len(ids) == len(set(ids)), "server event_ids are not unique"
    for event in sim.server_events:
        validate_server(event)


class Client:
    """A scripted Realtime client over a real WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._n = 0

    async def send(self, type_: str, **fields: Any) -> str:
        """Send a valid GA client event (checked against openai's models first); returns its event_id."""
        self._n += 1
        event_id = f"evt_{self._n}"
        event = {"type": type_, "event_id": event_id, **fields}
        validate_client(event)
        await self.ws.send(json.dumps(event))
        return event_id

    async def send_raw(self, text: str) -> None:
        """Send a frame as is: for the malformed and beta-shaped ones openai's models would reject."""
        await self.ws.send(text)

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), 10 * UNIT_S)
        event: dict[str, Any] = json.loads(frame)
        validate_server(event)
        self.received.append(event)
        return event

    async def until(self, type_: str) -> list[dict[str, Any]]:
        """Frames up to and including the first of ``type_``."""
        got = []
        while True:
            got.append(await self.recv())
            if got[-1]["type"] == type_:
                return got

    async def expect(self, type_: str) -> dict[str, Any]:
        """The next frame, which must be of ``type_``."""
        event = await self.recv()
        assert event["type"] == type_, event
        return event


@contextlib.asynccontextmanager
async def client(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """A connected client that has already read (and checked) session.created."""
    async with connect(url, additional_headers=headers or {}, open_timeout=10 * UNIT_S) as ws:
        c = Client(ws)
        await c.expect("session.created")
        yield c


async def configure(c: Client) -> dict[str, Any]:
    """The GA push-to-talk session.update of reference §3.1; returns session.updated."""
    await c.send("session.update", session={
        "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
        "instructions": "You are the voice of exhibit 12. Answer in two sentences.",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": {"type": "far_field"},
                            "transcription": None, "turn_detection": None},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0}},
        "tools": [], "tool_choice": "auto", "max_output_tokens": 1024, "truncation": "auto"})
    return await c.expect("session.updated")


def audio_of(events: list[dict[str, Any]], response_id: str | None = None) -> Pcm:
    """The reply audio carried by the output_audio deltas among ``events``, concatenated."""
    parts = [b64_to_pcm(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
             and (response_id is None or e["response_id"] == response_id)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
