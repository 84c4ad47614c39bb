"""A hostile server against kioskd's own parts, in-process: a real loopback WebSocket from the hostile endpoint
(``kioskd/sim/hostile.py``), the real link adapter and executor, PortAudio on the null sinks, and the log as
JSON lines at the default level. Each attack is survived, said in a few short lines, and the kiosk goes on."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from kioskd import log as log_mod
from kioskd.adapters.audio import AudioIO
from kioskd.adapters.link import LinkOptions, RealtimeLink
from kioskd.adapters.realtime_ws import MAX_FRAME_BYTES
from kioskd.core import events as ev
from kioskd.core.bound import BURST
from kioskd.core.kiosk import Kiosk
from kioskd.core.settings import Settings, TurnSettings
from kioskd.executor import Executor
from kioskd.metrics import LogSink, StatusSink
from kioskd.sim.hostile import Attack, HostileServer, Peer, deflated_frame, error_event
from tests.conftest import run, wait_until


@dataclass
class Rig:
    server: HostileServer
    executor: Executor
    status: StatusSink
    log: io.StringIO

    @property
    def phase(self) -> str:
        return self.executor.kiosk.phase.value

    def lines(self) -> list[str]:
        return self.log.getvalue().splitlines()

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [line for line in map(json.loads, self.lines()) if line["event"] == name]


@asynccontextmanager
async def rig(attack: Attack) -> AsyncIterator[Rig]:
    log = io.StringIO()
    log_mod.configure("info", "json", stream=log)
    server = HostileServer(attack)
    await server.start()
    holder: list[Executor] = []
    audio = AudioIO(input_device="kiosk_microphone", output_device="kiosk_speaker",
                    on_mic=lambda pcm: holder[0].post(ev.MicBlock(pcm)),
                    on_drained=lambda: holder[0].post(ev.PlaybackDrained(0)), log=log_mod.get_logger("kioskd.audio"))
    await audio.start()
    status = StatusSink()
    executor = Executor(Kiosk(Settings(turn=TurnSettings(earcons=False)), rand=random.random), audio=audio,
                        set_led=lambda led: None, open_link=lambda post, model: RealtimeLink(LinkOptions(server.url), post),
                        sinks=[LogSink(log_mod.get_logger("kioskd")), status])
    holder.append(executor)
    task = asyncio.create_task(executor.run())
    r = Rig(server, executor, status, log)
    try:
        await wait_until(lambda: r.phase == "idle", "the first session")
        yield r
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await executor.close()
        await audio.close()
        await server.close()
        log_mod.reset()


def _delta(audio_chars: int) -> str:
    return json.dumps({"type": "response.output_audio.delta", "event_id": "e", "response_id": "resp_x",
                       "item_id": "item_x", "output_index": 0, "content_index": 0, "delta": "A" * audio_chars})


def test_an_oversize_frame_ends_the_session_with_its_cause_and_the_link_reconnects() -> None:
    """The first session gets a 1 MB audio delta: kioskd reads no frame over MAX_FRAME_BYTES, so the session ends
    (close 1009) with one ws.disconnected saying why; the next session is configured and the kiosk is idle."""
    async def attack(peer: Peer) -> None:
        await peer.configure()
        if peer.number == 1:
            await peer.send_raw(_delta(10**6))

    async def main() -> None:
        async with rig(attack) as r:
            await wait_until(lambda: r.server.connections == 2 and r.phase == "idle", "the next session")
            (lost,) = r.logged("ws.disconnected")
            assert lost["level"] == "warning" and "close code 1009" in lost["error"]
            assert f"frame over kioskd's {MAX_FRAME_BYTES // 1024} KiB limit" in lost["error"]
    run(main())


def test_compressed_frames_kioskd_never_agreed_to_end_the_session() -> None:
    """Frames compressed with permessage-deflate (each 269 bytes inflating to a 200 KB delta), which kioskd never
    offers: the first ends the session as a protocol error, nothing is inflated, and the link reconnects."""
    async def attack(peer: Peer) -> None:
        await peer.configure()
        if peer.number == 1:
            peer.ws.transport.write(deflated_frame(_delta(200_000)) * 100)

    async def main() -> None:
        async with rig(attack) as r:
            await wait_until(lambda: r.server.connections == 2 and r.phase == "idle", "the next session")
            (lost,) = r.logged("ws.disconnected")
            assert "reserved bits must be 0" in lost["error"]
            assert r.logged("ws.bad_event") == []
    run(main())


def test_a_binary_frame_is_a_bad_event_even_when_it_carries_an_event() -> None:
    """Binary frames carrying a fatal `error` (invalid_api_key): never decoded, so the kiosk stays up; one
    ws.bad_event warning (reason binary) however many there are."""
    fatal = json.dumps(error_event("invalid_api_key", "Incorrect API key provided.")).encode()

    async def attack(peer: Peer) -> None:
        await peer.configure()
        for _ in range(50):
            await peer.send_raw(fatal)
        await peer.send(error_event("server_error", "last", None, "server_error"))  # a text frame: the end

    async def main() -> None:
        async with rig(attack) as r:
            await wait_until(lambda: r.status.events["ws.server_error"] == 1, "the last frame")
            (bad,) = r.logged("ws.bad_event")
            assert (bad["level"], bad["type"], bad["reason"]) == ("warning", "(binary)", "binary")
            assert r.logged("ws.fault") == [] and r.phase == "idle" and r.server.connections == 1
    run(main())


def test_an_error_flood_is_a_few_short_lines() -> None:
    """1,000 `error` events with a 10 KB message: BURST ws.server_error lines, none longer than a kilobyte;
    status counts the lines said (the rest are counted when their summary comes, a minute on)."""
    async def attack(peer: Peer) -> None:
        await peer.configure()
        for i in range(1000):
            await peer.send(error_event("server_error", f"{i} " + "x" * 10_000, None, "server_error"))
        await peer.send({"type": "response.hologram.delta", "event_id": "e"})  # an unknown type: the end

    async def main() -> None:
        async with rig(attack) as r:
            await wait_until(lambda: r.status.events["ws.unknown_event"] == 1, "the end of the flood")
            said = r.logged("ws.server_error")
            assert len(said) == BURST and r.status.events["ws.server_error"] == BURST
            assert max(len(line.encode()) for line in r.lines()) < 1000
            assert r.phase == "idle"
    run(main())


def test_a_fatal_code_naming_a_client_event_is_a_warning_and_the_turn_goes_on() -> None:
    """unknown_parameter naming the question's first event (not the session's configuration): a warning; the
    session stays up and the visitor is still being listened to."""
    async def attack(peer: Peer) -> None:
        await peer.configure()
        started = await peer.event("input_audio_buffer.clear")
        await peer.send(error_event("unknown_parameter", "Unknown parameter: 'audio.foo'.", started["event_id"]))

    async def main() -> None:
        async with rig(attack) as r:
            r.executor.post(ev.Pressed(asyncio.get_running_loop().time()))
            await wait_until(lambda: bool(r.logged("ws.server_error")), "the error")
            (err,) = r.logged("ws.server_error")
            assert (err["level"], err["code"]) == ("warning", "unknown_parameter")
            assert r.logged("ws.fault") == [] and r.phase == "listening"
            assert r.executor.kiosk.link.phase.value == "ready"
    run(main())
