"""The composition root: builds the adapters from config, owns every task, and runs the action executor.

One input at a time goes into the turn machine; its actions are executed in order. An input produced by an
action (``Interrupt`` → ``Played``) is handled before the next queued input. Edge threads (PortAudio,
gpiozero) never touch the machine: their adapters post inputs to this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import sys
import time
from typing import Any, Final

from websockets.asyncio.client import ClientConnection

from kioskd import config as config_mod
from kioskd import log as log_mod
from kioskd.adapters import realtime_ws, systemd
from kioskd.adapters.audio import AudioIO, Mic
from kioskd.adapters.button import ButtonAdapter, mock_pin_factory
from kioskd.adapters.control import ControlServer
from kioskd.core import events as ev
from kioskd.core.pcm import earcon_pcm
from kioskd.core.realtime import parse_server_event
from kioskd.core.turn import Phase, TurnMachine, TurnSettings
from kioskd.core.underflow import UnderflowGuard
from kioskd.config import KioskConfig
from kioskd.errors import ConfigError, ConnectionLost, DeviceError, KioskError


def turn_settings(cfg: KioskConfig) -> TurnSettings:
    t = cfg.turn
    return TurnSettings(
        voice=cfg.realtime.voice, instructions=cfg.realtime.instructions, min_hold_ms=t.min_hold_ms,
        hold_cap_s=t.hold_cap_s, reply_wait_s=t.reply_wait_s, reply_cap_s=t.reply_cap_s, rearm_ms=t.rearm_ms,
        connect_timeout_s=cfg.realtime.connect_timeout_s, earcons=cfg.audio.earcons, preroll_ms=cfg.audio.preroll_ms,
    )


#: frames waiting for the network; past this the link is stalled (~10 s of microphone appends)
OUTBOX_FRAMES: Final = 256
#: how often the audio path's health is checked, and how long a stream may go without a callback
HEALTH_PERIOD_S: Final = 0.5
GIL_SWITCH_S: Final = 0.001
AUDIO_STALE_S: Final = 2.0
#: the event loop may run this late before the watchdog ping is withheld
LOOP_LAG_LIMIT_S: Final = 1.0
#: restart-requiring sections: a reload logs them and applies the rest
RESTART_SECTIONS: Final = ("audio", "button", "led", "control", "simulator", "log")


class Daemon:
    """kioskd's running process. ``run()`` returns the exit code."""

    def __init__(self, cfg: KioskConfig, *, api_key: str | None, config_path: str | None = None) -> None:
        self.cfg = cfg
        self._config_path = config_path
        self._exit_code = 0
        self._outbox: asyncio.Queue[str] | None = None
        self._api_key = api_key
        self._log = log_mod.get_logger("kioskd")
        self._machine = TurnMachine(turn_settings(cfg), rand=random.random)
        self._queue: asyncio.Queue[ev.Input] = asyncio.Queue()
        self._timers: dict[ev.Timer, asyncio.TimerHandle] = {}
        self._conn: ClientConnection | None = None
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._url = cfg.realtime.url or ""
        self._simulated = False
        self._ready = False
        self._ready_sent = False
        self._underflows_said = False
        self._audio_grace_until_s = 0.0  # loop time: stale callbacks are not a fault until then (after a stall)
        self._started_s = time.monotonic()
        self._earcons = {kind: earcon_pcm(kind) for kind in ev.Earcon}
        self.audio: AudioIO | None = None
        self.button: ButtonAdapter | None = None

    # ------------------------------------------------------------------------------------------ inputs

    def post(self, inp: ev.Input) -> None:
        """Queue an input (loop thread only). A press opens the microphone gate first, so the pre-roll the audio
        adapter kept is queued ahead of it and live blocks follow it."""
        if isinstance(inp, ev.Pressed) and self.audio is not None:
            self.audio.set_mic(Mic.LIVE)
        self._queue.put_nowait(inp)

    def _post_from(self, generation: int, inp: ev.Input) -> None:
        """Queue an input from a WebSocket session, unless that session has been replaced meanwhile."""
        if generation == self._generation:
            self.post(inp)

    # ------------------------------------------------------------------------------------------ run

    async def run(self) -> int:
        # the speaker's callback runs every 5 ms with ~10 ms of headroom: when the loop thread is busy in Python,
        # let the callback thread have the GIL within 1 ms rather than the default 5 ms (a whole block)
        sys.setswitchinterval(GIL_SWITCH_S)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stop = stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        async with contextlib.AsyncExitStack() as stack:
            self._simulated = not self._url
            if self._simulated:
                self._url = await self._start_simulator(stack)
            audio = AudioIO(
                input_device=self.cfg.audio.input_device, output_device=self.cfg.audio.output_device,
                on_mic=lambda pcm: self.post(ev.MicBlock(pcm)), on_drained=self._on_drained,
                on_started=lambda at_s: self.post(ev.PlaybackStarted(at_s)),
                block_ms=self.cfg.audio.block_ms, latency_s=self.cfg.audio.latency_s,
                prebuffer_ms=self.cfg.audio.prebuffer_ms, prebuffer_min_ms=self.cfg.audio.prebuffer_min_ms,
                prebuffer_max_ms=self.cfg.audio.prebuffer_max_ms, preroll_ms=self.cfg.audio.preroll_ms,
                log=log_mod.get_logger("kioskd.audio"),
            )
            await audio.start()
            stack.push_async_callback(audio.close)
            self.audio = audio
            simulated = self.cfg.button.kind == "simulated"
            button = ButtonAdapter(
                self.cfg.button.pin, self.cfg.led.pin, loop=loop, pwm=self.cfg.led.pwm, simulated=simulated,
                pin_factory=mock_pin_factory() if simulated else None,
                on_press=lambda at_s: self.post(ev.Pressed(at_s)),
                on_release=lambda at_s: self.post(ev.Released(at_s)),
            )
            stack.callback(button.close)
            self.button = button
            control = ControlServer(config_mod.control_socket_path(self.cfg.control), self._control)
            await control.start()
            stack.push_async_callback(control.close)
            self._log.info("daemon.started", url=realtime_ws.endpoint_of(self._url), button=self.cfg.button.kind,
                           control_socket=config_mod.control_socket_path(self.cfg.control))
            executor = asyncio.create_task(self._execute_forever(), name="executor")
            health = asyncio.create_task(self._watch_audio(), name="audio-health")
            watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
            stop_wait = asyncio.create_task(stop.wait())
            await asyncio.wait({executor, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            health.cancel()
            watchdog.cancel()
            if executor.done():
                stop_wait.cancel()
                executor.result()  # an executor crash is a kioskd bug: let it surface
            await self._shutdown(executor)
        self._log.info("daemon.stopped", exit_code=self._exit_code)
        return self._exit_code

    async def _watch_audio(self) -> None:
        """Device loss: PortAudio cannot reopen a lost USB device in-process (pi-audio.md §2.7), so say so once
        and exit non-zero: systemd's Restart=on-failure starts a fresh process, which re-enumerates devices."""
        assert self.audio is not None
        loop = asyncio.get_running_loop()
        guard = UnderflowGuard(self.audio.output_latency_s)
        last_s = loop.time()
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            self._check_stall(last_s, HEALTH_PERIOD_S)
            if self._ready and not self._ready_sent:  # a READY=1 that was dropped goes again, visitor or not
                self._ready_sent = systemd.notify("READY=1", f"STATUS={self._machine.phase.value}")
            reason = self._audio_fault() or await self._guard_underflows(guard)
            last_s = loop.time()  # after the work: a slow reopen is not a stall
            if reason is not None:
                self._log.error("audio.device_lost", cause=reason, input_device=self.audio.device_name("input"),
                                output_device=self.audio.device_name("output"))
                if self.button is not None:
                    self.button.set_led(ev.Led.ERROR)
                self._exit_code = 1
                loop.call_soon(self._stop.set)
                return

    def _check_stall(self, last_s: float, period_s: float) -> None:
        """Called by each periodic task as it wakes (``last_s``: when it last finished, ``period_s``: its sleep). A
        wake-up more than LOOP_LAG_LIMIT_S late means the whole process stood still (overload, swapping, SIGSTOP)
        and runs again: stale callbacks then prove nothing about the devices, so they get the start-up grace
        again, whichever task notices first. Said once per episode."""
        now_s = asyncio.get_running_loop().time()
        lag_s = now_s - last_s - period_s
        if lag_s <= LOOP_LAG_LIMIT_S:
            return
        if now_s >= self._audio_grace_until_s:  # not within the grace of a stall already said
            self._log.warning("daemon.loop_stalled", stalled_s=round(lag_s + period_s, 1),
                              phase=self._machine.phase.value)
        self._audio_grace_until_s = now_s + AUDIO_STALE_S

    def _audio_fault(self) -> str | None:
        """What is wrong with the audio path now, or None (also during the grace after a stall)."""
        assert self.audio is not None
        if asyncio.get_running_loop().time() < self._audio_grace_until_s:
            return None
        return self.audio.fault(time.monotonic(), AUDIO_STALE_S)

    async def _guard_underflows(self, guard: UnderflowGuard) -> str | None:
        """Gaps heard because the output callbacks came too late: between visits, reopen the speaker with a
        longer device queue (logged once per raise). Returns a reason if the device could not be reopened at all."""
        assert self.audio is not None
        to_s = guard.observe(time.monotonic(), self.audio.heard_underflows)
        if to_s is None:
            if guard.at_limit and not self._underflows_said:
                self._underflows_said = True
                self._log.warning("audio.underflows", device=self.audio.device_name("output"),
                                  latency_s=round(self.audio.output_latency_s, 4),
                                  underflows=self.audio.heard_underflows,
                                  cause="the speaker keeps running dry at the longest device queue kioskd can get: "
                                        "this machine is overloaded or the device is failing")
            return None
        if self._machine.phase is not Phase.IDLE or not self.audio.silent or not self._queue.empty():
            return None  # never under a reply, an earcon or a press on its way: wait until nothing plays
        from_s = guard.latency_s
        refused: str | None = None
        try:
            got_s = await self.audio.reopen_output(to_s)
        except DeviceError as exc:
            refused = str(exc)
            try:  # go back to the queue that worked
                await self.audio.reopen_output(from_s)
            except DeviceError:
                return f"output stream could not be reopened: {exc}"
        if refused is None and got_s > from_s:
            count = guard.raised(got_s)
            self._log.warning("audio.latency_raised", device=self.audio.device_name("output"),
                              from_s=round(from_s, 4), to_s=round(got_s, 4), underflows=count, window_s=guard.window_s,
                              cause=f"the speaker ran dry {count} times in {guard.window_s:.0f} s while playing: "
                                    f"callbacks came too late for a {from_s * 1000:.0f} ms device queue",
                              hint="set audio.latency_s (and audio.block_ms) in the config to start there")
            return None
        guard.give_up()
        self._log.warning("audio.latency_refused", device=self.audio.device_name("output"), from_s=round(from_s, 4),
                          asked_s=to_s, latency_s=round(self.audio.output_latency_s, 4),
                          cause=refused or f"the device granted no longer queue than {from_s * 1000:.0f} ms")
        return None

    async def _watchdog(self) -> None:
        """WATCHDOG=1 every WATCHDOG_USEC/2 while the audio callbacks are fresh. A hung event loop cannot ping at
        all, which is what the watchdog catches; a loop that stalled and runs again pings on time (withholding then
        would only get a recovered kiosk killed), so each tick first checks for a stall itself. A withheld ping is
        said once per episode, so a kiosk whose audio is stuck is restarted by systemd, not kept alive."""
        interval_s = systemd.watchdog_interval_s()
        if interval_s is None or self.audio is None:
            return
        loop = asyncio.get_running_loop()
        withheld: str | None = None
        last_s = loop.time()
        while True:
            await asyncio.sleep(interval_s)
            self._check_stall(last_s, interval_s)
            reason = self._audio_fault()
            if reason is None:
                if withheld is not None:
                    self._log.info("systemd.watchdog_resumed", after=withheld)
                systemd.notify("WATCHDOG=1")
            elif withheld is None:
                self._log.warning("systemd.watchdog_withheld", cause=reason)
            withheld = reason
            last_s = loop.time()

    def _reload(self) -> None:
        """SIGHUP (systemctl reload): validate the file first; on any error keep the running config."""
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = config_mod.load(self._config_path)
            api_key = config_mod.read_api_key(new.realtime)  # a rotated credential needs no restart
        except ConfigError as exc:
            self._log.warning("config.reload_failed", **log_mod.error_fields(exc))
        else:
            if api_key:
                log_mod.add_secret(api_key)
            self._api_key = api_key
            restart = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(self.cfg, s)]
            if new.realtime.url != self.cfg.realtime.url and not (new.realtime.url is None and self._simulated):
                self._url = new.realtime.url or self._url
            old = self.cfg.realtime
            session_changed = (new.realtime.voice, new.realtime.instructions, new.realtime.url) != (
                old.voice, old.instructions, old.url)
            self.cfg = new
            self._machine.settings = turn_settings(new)  # caps at once; voice and instructions with the session
            self._log.info("config.reloaded", source=new.source, needs_restart=restart, session_changed=session_changed)
            self.post(ev.Reloaded(session_changed=session_changed))
        systemd.notify("READY=1", f"STATUS={self._machine.phase.value}")

    async def _start_simulator(self, stack: contextlib.AsyncExitStack) -> str:
        from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

        s = self.cfg.simulator
        sim = RealtimeSimulator(SimOptions(
            api_key=None, first_delta_delay_ms=s.first_delta_delay_ms, jitter_ms=s.jitter_ms, voice=s.voice,
        ))
        await sim.start()
        stack.push_async_callback(sim.close)
        self._log.info("daemon.simulator", url=sim.url)
        return sim.url

    async def _shutdown(self, executor: asyncio.Task[None]) -> None:
        systemd.notify("STOPPING=1", "STATUS=stopping")
        executor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await executor
        if self.audio is not None:
            self.audio.interrupt()  # fade out whatever is playing
        for handle in self._timers.values():
            handle.cancel()
        await self._close_connection(1000, timeout_s=0.5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.button is not None:
            self.button.set_led(ev.Led.OFF)
        await asyncio.sleep(0.05)  # let the fade reach the device before the stream closes

    async def _execute_forever(self) -> None:
        await self._execute(self._machine.begin(asyncio.get_running_loop().time()))
        self._gate_mic()
        while True:
            inp = await self._queue.get()
            await self._feed(inp)

    async def _feed(self, inp: ev.Input) -> None:
        now = asyncio.get_running_loop().time()
        before = self._machine.phase
        try:
            actions = self._machine.handle(inp, now)
        except Exception as exc:
            # a kioskd bug (LocalProtocolError or worse): say so once with the traceback, start over with a
            # fresh machine and a fresh session, keep serving
            self._log.error("turn.bug", input=type(inp).__name__, phase=before.value, exc_info=exc,
                            **log_mod.error_fields(exc))
            settings = self._machine.settings
            self._machine = TurnMachine(settings, rand=random.random)
            await self._close_connection(1000)
            apology = [ev.PlayEarcon(ev.Earcon.APOLOGY)] if settings.earcons else []
            actions = [ev.Interrupt(), *apology, *self._machine.begin(now)]
        await self._execute(actions)
        if self._machine.phase is not before or isinstance(inp, ev.Pressed):
            self._gate_mic()
        if self._machine.phase is not before:
            self._phase_changed()

    def _gate_mic(self) -> None:
        """The microphone reaches the loop only while LISTENING (the button held, before the hold cap); in IDLE the
        adapter keeps the pre-roll (never what the speaker played); otherwise (a reply, offline) nothing is kept."""
        if self.audio is not None:
            phase = self._machine.phase
            self.audio.set_mic(Mic.LIVE if phase is Phase.LISTENING else
                               Mic.PREROLL if phase is Phase.IDLE else Mic.OFF)

    def _phase_changed(self) -> None:
        phase = self._machine.phase
        fields = [f"STATUS={phase.value}"]
        if not self._ready and phase in (Phase.IDLE, Phase.OFFLINE, Phase.FAULT):
            self._ready = True  # a kiosk that answers with the offline prompt is serving
            self._log.info("daemon.ready", phase=phase.value)
        if self._ready and not self._ready_sent:
            fields.insert(0, "READY=1")  # again with every status until a datagram carrying it was sent
        if systemd.notify(*fields) and self._ready:
            self._ready_sent = True

    # ------------------------------------------------------------------------------------------ actions

    async def _execute(self, actions: list[ev.Action]) -> None:
        """Run the actions in order; an input one of them produces (Interrupt → Played) is fed right after the
        list, before the next queued input, so barge-in goes out as stop → cancel → truncate → clear."""
        produced: list[ev.Input] = []
        for action in actions:
            try:
                result = await self._do(action)
            except Exception as exc:  # an edge failed to carry out one action: say which, go on with the rest
                self._log.error("daemon.action_failed", action=type(action).__name__, **log_mod.error_fields(exc))
                continue
            if result is not None:
                produced.append(result)
        for inp in produced:
            await self._feed(inp)

    async def _do(self, action: ev.Action) -> ev.Input | None:
        audio, button = self.audio, self.button
        assert audio is not None and button is not None
        match action:
            case ev.Send(event):
                self._send(json.dumps(event))
            case ev.Play(pcm, item_id):
                audio.play(pcm, item_id)
            case ev.EndOfReply():
                audio.end_of_reply()
            case ev.Interrupt():
                playing, played_ms = audio.interrupt()
                return ev.Played(playing, played_ms)
            case ev.PlayEarcon(kind):
                audio.play(self._earcons[kind], None)
                audio.end_of_reply()
            case ev.SetLed(pattern):
                button.set_led(pattern)
            case ev.Arm(timer, at_s):
                old = self._timers.pop(timer, None)
                if old is not None:
                    old.cancel()
                self._timers[timer] = asyncio.get_running_loop().call_at(at_s, self.post, ev.Timeout(timer))
            case ev.Disarm(timer):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case ev.Connect():
                await self._close_connection(1000)
                self._generation += 1
                self._spawn(self._session(self._generation))
            case ev.Close(code):
                await self._close_connection(code)
            case ev.Note():
                log_mod.emit(self._log, action)
        return None

    def _send(self, frame: str) -> None:
        """Queue a frame for the session's writer; the executor never waits for the network. A full outbox means
        the link has stalled: the session is ended as lost rather than letting audio pile up."""
        if self._outbox is None:
            return
        try:
            self._outbox.put_nowait(frame)
        except asyncio.QueueFull:
            self._outbox = None
            generation = self._generation
            self._spawn(self._close_connection(1011, timeout_s=0.5))
            self.post(ev.Disconnected(ConnectionLost(None, f"send queue full ({OUTBOX_FRAMES} frames): network stalled")))
            self._log.debug("ws.outbox_full", generation=generation)

    async def _writer(self, conn: ClientConnection, outbox: asyncio.Queue[str]) -> None:
        while True:
            await realtime_ws.send(conn, await outbox.get())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_connection(self, code: int, timeout_s: float = 2.0) -> None:
        conn, self._conn = self._conn, None
        self._outbox = None
        self._generation += 1  # whatever that session still reports is stale
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(code), timeout_s)

    async def _session(self, generation: int) -> None:
        """One WebSocket session: connect, then turn every frame into an input; any end becomes Disconnected."""
        post = self._post_from
        try:
            conn = await realtime_ws.open_session(
                self._url, auth=self.cfg.realtime.auth, api_key=self._api_key,
                open_timeout_s=self.cfg.realtime.connect_timeout_s, keepalive_s=self.cfg.realtime.keepalive_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes an input: the machine decides what it means
            post(generation, ev.Disconnected(exc))
            return
        if generation != self._generation:
            await conn.close(1000)
            return
        self._conn = conn
        outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_FRAMES)
        self._outbox = outbox
        writer = asyncio.create_task(self._writer(conn, outbox))
        post(generation, ev.Connected())
        try:
            async for frame in realtime_ws.frames(conn):
                inp = parse_server_event(frame)
                if isinstance(inp, ev.SessionCreated) and inp.expires_at_s is not None:
                    inp = dataclasses.replace(inp, expires_in_s=inp.expires_at_s - time.time())
                post(generation, inp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            post(generation, ev.Disconnected(exc))
        finally:
            writer.cancel()

    def _on_drained(self) -> None:
        assert self.audio is not None
        stats = self.audio.stats()
        keys = ("target_ms", "depth_ms", "jitter_ms", "late_pushes", "late_ms", "overflows", "heard_underflows",
                "output_latency_s")
        playout: dict[str, Any] = {k: stats[k] for k in keys if k in stats}
        self.post(ev.PlaybackDrained(underruns_total=int(stats.get("underruns", 0)), playout=playout))

    # ------------------------------------------------------------------------------------------ control

    async def _control(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        button = self.button
        assert button is not None
        if cmd == "press":
            button.press()
            return {"phase": self._machine.phase.value}
        if cmd == "release":
            button.release()
            return {"phase": self._machine.phase.value}
        if cmd == "status":
            return self.status()
        raise KioskError(f"unknown command {cmd!r}")

    def status(self) -> dict[str, Any]:
        out = self._machine.status()
        out["endpoint"] = realtime_ws.endpoint_of(self._url)
        out["uptime_s"] = round(time.monotonic() - self._started_s, 1)
        out["button"] = self.cfg.button.kind
        if self.button is not None:
            out["led"] = self.button.led_pattern.value
        if self.audio is not None:
            out["audio"] = self.audio.stats()
        return out
