"""The executor in-process, on real parts: the simulator on a loopback WebSocket, the real link adapter, PortAudio
on the PulseAudio null sinks. Its failure paths — a bug in the machine, a failed action, a full outbox, a late
event from a replaced session — are driven here rather than through a child process.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kioskd import log as log_mod
from kioskd.adapters.audio import AudioIO
from kioskd.adapters.link import OUTBOX_FRAMES, LinkOptions, RealtimeLink
from kioskd.core import events as ev
from kioskd.core.kiosk import Kiosk
from kioskd.core.pcm import tone
from kioskd.core.settings import Settings, TurnSettings
from kioskd.errors import ConnectionLost
from kioskd.executor import Executor
from kioskd.sim.harness import speak, write_wav
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
from tests.conftest import UNIT_S, run, wait_until
from tests.realtime_schema import validate_client

SETTINGS = Settings(turn=TurnSettings(earcons=False))


class ListSink:
    def __init__(self) -> None:
        self.notes: list[ev.Note] = []

    def note(self, note: ev.Note) -> None:
        self.notes.append(note)

    def named(self, name: str) -> list[ev.Note]:
        return [n for n in self.notes if n.name == name]


class BuggyKiosk(Kiosk):
    """The real core, with a bug planted: it raises on the chosen input type (a stand-in for a broken row)."""

    bug_on: type | None = None

    def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
        if self.bug_on is not None and isinstance(inp, self.bug_on):
            raise ZeroDivisionError("a planted bug")
        return super().handle(inp, now)


@dataclass
class Rig:
    sim: RealtimeSimulator
    executor: Executor
    sink: ListSink
    task: asyncio.Task[int]
    log: io.StringIO
    leds: list[ev.Led] = field(default_factory=list)

    @property
    def kiosk(self) -> Kiosk:
        return self.executor.kiosk

    def logged(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line.startswith("{")]
        return [line for line in lines if line["event"] == name]


@asynccontextmanager
async def rig(kiosk: Kiosk | None = None, set_led: Callable[[ev.Led], None] | None = None) -> AsyncIterator[Rig]:
    log = io.StringIO()
    log_mod.configure("debug", "json", stream=log)
    sim = RealtimeSimulator(SimOptions(voice="tone", reply_ms=300, first_delta_delay_ms=20))
    await sim.start()
    sink = ListSink()
    holder: list[Executor] = []
    audio = AudioIO(input_device="kiosk_microphone", output_device="kiosk_speaker",
                    on_mic=lambda pcm: holder[0].post(ev.MicBlock(pcm)), on_drained=lambda dropped_ms: holder[0].post(
                        ev.PlaybackDrained(0, dropped_ms=dropped_ms)), log=log_mod.get_logger("kioskd.audio"))
    await audio.start()
    leds: list[ev.Led] = []
    executor = Executor(kiosk or Kiosk(SETTINGS, rand=random.random), audio=audio, set_led=set_led or leds.append,
                        open_link=lambda post, model: RealtimeLink(LinkOptions(sim.url), post), sinks=[sink])
    holder.append(executor)
    task = asyncio.create_task(executor.run())
    r = Rig(sim, executor, sink, task, log, leds)
    try:
        await wait_until(lambda: r.kiosk.phase.value == "idle", "the first session")
        yield r
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await executor.close()
        await audio.close()
        await sim.close()
        log_mod.reset()


async def ask(r: Rig, question: Path) -> None:
    """Press, play the question into the microphone's sink (a null sink's monitor is silent, not merely quiet,
    while nothing plays), release."""
    loop = asyncio.get_running_loop()
    r.executor.post(ev.Pressed(loop.time()))
    await asyncio.to_thread(speak, question)
    r.executor.post(ev.Released(loop.time()))


@pytest.fixture
def question(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "q.wav", tone(300, 400, 48000, 0.4), 48000)


def test_a_visit_in_process_speaks_valid_ga_events(question: Path) -> None:
    """Press, hold, release on real parts: one turn.done answered with the simulator's usage; every event the
    link sent is a valid GA client event."""
    async def main() -> None:
        async with rig() as r:
            await ask(r, question)
            await wait_until(lambda: bool(r.sink.named("turn.done")), "the turn's line")
            (done,) = r.sink.named("turn.done")
            assert done.fields["outcome"] == "answered", done.fields
            assert done.fields["usage"]["total_tokens"] > 0
            types = [e["type"] for e in r.sim.client_events]
            assert types[0] == "session.update" and "input_audio_buffer.commit" in types
            for event in r.sim.client_events:
                validate_client(event)
    run(main())


def test_a_bug_in_the_machine_starts_fresh_machines_and_a_fresh_session() -> None:
    """A planted bug on a press: one turn.bug line with its traceback, a new session opened, and the kiosk
    serves again; the third bug within ten minutes ends run() with exit code 1 (daemon.bug_limit)."""
    async def main() -> None:
        kiosk = BuggyKiosk(SETTINGS, rand=random.random)
        async with rig(kiosk) as r:
            kiosk.bug_on = ev.Pressed
            r.executor.post(ev.Pressed(0.0))
            await wait_until(lambda: r.sim.connections == 2 and r.kiosk.phase.value == "idle", "a fresh session")
            (bug,) = r.logged("turn.bug")
            assert bug["level"] == "error" and bug["error_type"] == "ZeroDivisionError" and "exception" in bug
            assert not r.task.done()
            r.executor.post(ev.Pressed(0.0))
            r.executor.post(ev.Pressed(0.0))
            assert await asyncio.wait_for(r.task, 10 * UNIT_S) == 1
            assert len(r.logged("turn.bug")) == 3
            (limit,) = r.sink.named("daemon.bug_limit")
            assert "3 kioskd bugs" in limit.fields["cause"]
    run(main())


def test_a_failed_action_is_logged_and_the_rest_run(question: Path) -> None:
    """The LED driver raises on one pattern: daemon.action_failed names the action, and the turn goes on (the
    question is still started and sent)."""
    def set_led(pattern: ev.Led) -> None:
        if pattern is ev.Led.LISTENING:
            raise OSError("LED pin gone")

    async def main() -> None:
        async with rig(set_led=set_led) as r:
            await ask(r, question)
            await wait_until(lambda: bool(r.sink.named("turn.done")), "the turn's line")
            (failed,) = r.logged("daemon.action_failed")
            assert failed["action"] == "SetLed" and "LED pin gone" in failed["error"]
            assert r.sink.named("turn.done")[0].fields["outcome"] == "answered"
    run(main())


def test_a_full_outbox_ends_the_session_with_one_disconnected() -> None:
    """A writer that cannot keep up (more frames than OUTBOX_FRAMES queued at once): exactly one Disconnected
    naming the stalled send queue; sends after that are dropped, and close() returns."""
    async def main() -> None:
        sim = RealtimeSimulator(SimOptions(voice="tone", reply_ms=100))
        await sim.start()
        posted: list[ev.Input] = []
        link = RealtimeLink(LinkOptions(sim.url), posted.append)
        link.start()
        await wait_until(lambda: any(isinstance(p, ev.SessionCreated) for p in posted), "session.created")
        block = ev.AppendAudio(tone(440, 20))
        for _ in range(OUTBOX_FRAMES + 10):  # no await in between: the writer never runs
            link.send(block)
        await asyncio.sleep(0.2)
        lost = [p for p in posted if isinstance(p, ev.Disconnected)]
        assert len(lost) == 1 and isinstance(lost[0].cause, ConnectionLost)
        assert "send queue full" in str(lost[0].cause)
        link.send(block)
        await asyncio.wait_for(link.close(), 5 * UNIT_S)
        assert len([p for p in posted if isinstance(p, ev.Disconnected)]) == 1
        await sim.close()
    run(main())


def test_a_closed_link_reports_nothing_and_a_dropped_one_exactly_one_disconnected() -> None:
    """A replaced session (closed by kioskd) posts nothing more, even as its server goes away; a session the
    server drops posts exactly one Disconnected."""
    async def main() -> None:
        sim = RealtimeSimulator(SimOptions(voice="tone", reply_ms=100))
        await sim.start()
        old_posted: list[ev.Input] = []
        new_posted: list[ev.Input] = []
        old = RealtimeLink(LinkOptions(sim.url), old_posted.append)
        old.start()
        await wait_until(lambda: any(isinstance(p, ev.SessionCreated) for p in old_posted), "the old session")
        new = RealtimeLink(LinkOptions(sim.url), new_posted.append)
        new.start()
        await old.close()
        seen = len(old_posted)
        await wait_until(lambda: any(isinstance(p, ev.SessionCreated) for p in new_posted), "the new session")
        await sim.close()  # the server goes away: only the live session reports it
        await wait_until(lambda: any(isinstance(p, ev.Disconnected) for p in new_posted), "the drop")
        await asyncio.sleep(0.2)
        assert len(old_posted) == seen
        assert len([p for p in new_posted if isinstance(p, ev.Disconnected)]) == 1
        await new.close()
    run(main())


@pytest.mark.parametrize("code", [1])
def test_exit_action_ends_run_with_its_code(code: int) -> None:
    """An Exit action from the core ends run() with that code, whatever is still queued."""
    class ExitingKiosk(Kiosk):
        def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
            if isinstance(inp, ev.Pressed):
                return [ev.Exit(code, "test")]
            return super().handle(inp, now)

    async def main() -> None:
        async with rig(ExitingKiosk(SETTINGS, rand=random.random)) as r:
            r.executor.post(ev.Pressed(0.0))
            r.executor.post(ev.Released(0.0))
            assert await asyncio.wait_for(r.task, 5 * UNIT_S) == code
    run(main())
