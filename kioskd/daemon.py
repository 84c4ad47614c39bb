"""The composition root: builds the adapters and the core from the config and runs them under one TaskGroup.

Wiring only. The executor (``executor.py``) drives the core; the audio supervisor (``supervisor.py``) watches the
audio path and feeds systemd's watchdog; the link (``adapters/link.py``) owns each Realtime session. The daemon
handles the signals: SIGTERM/SIGINT stop it, SIGHUP reloads the config (validated first; on error the running
one stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from kioskd import checks
from kioskd import config as config_mod
from kioskd import log as log_mod
from kioskd import prom as prom_mod
from kioskd import spend as spend_mod
from kioskd import standby as standby_mod
from kioskd.adapters import prompts as prompts_mod
from kioskd.adapters import realtime_ws, systemd
from kioskd.adapters.audio import AudioIO
from kioskd.adapters.button import ButtonAdapter, mock_pin_factory
from kioskd.adapters.chat import ChatLink, ChatOptions
from kioskd.adapters.control import ControlServer
from kioskd.adapters.link import LinkOptions, RealtimeLink

if TYPE_CHECKING:
    from kioskd.adapters.webrtc import RtcLink
    from kioskd.sim.realtime_server import RealtimeSimulator
    from kioskd.sim.webrtc_server import RtcSimulator
from kioskd.adapters.models import ModelLifecycle
from kioskd.adapters.tools import ToolRunner
from kioskd.core import events as ev
from kioskd.core.chat import ChatRequest
from kioskd.core.kiosk import LED, Kiosk
from kioskd.errors import ConfigError, DeviceError, KioskError
from kioskd.executor import Executor
from kioskd.metrics import LogSink, StatusSink
from kioskd.supervisor import AudioSupervisor

GIL_SWITCH_S: Final = 0.001
#: restart-requiring sections: a reload logs them and applies the rest
RESTART_SECTIONS: Final = ("audio", "button", "led", "control", "simulator", "log", "prompts", "metrics")


class Daemon:
    """kioskd's running process. ``run()`` returns the exit code."""

    def __init__(self, checked: checks.Checked, *, config_path: str | Sequence[str] | None = None) -> None:
        cfg = checked.cfg
        self.cfg = cfg
        self.checked = checked
        # every file, re-read in order on reload (a base and an exhibit's overlay); none: the embedded default
        self._config_path = (config_path,) if isinstance(config_path, str) else tuple(config_path or ())
        self._api_key = checked.api_key
        self._exit_code = 0
        self._url = cfg.realtime.url or ""
        self._simulated = not self._url
        self._chat_sim_url = ""  # the embedded Chat Completions simulator's, when it runs
        self._log = log_mod.get_logger("kioskd")
        self._control_socket = config_mod.control_socket_path(cfg.control)  # ConfigError: an untrusted directory
        self._started_s = time.monotonic()
        self._stop = asyncio.Event()
        self._reload_due = asyncio.Event()  # SIGHUP; the reloader task takes it
        self._reloading = asyncio.Lock()  # one reload at a time (SIGHUP's or kioskctl's)
        self.status_sink = StatusSink()
        self.prom = prom_mod.PrometheusSink(models=lambda: self.models) \
            if cfg.metrics.listen is not None or cfg.metrics.textfile is not None else None
        self.spend = spend_mod.DailySpend(spend_mod.state_dir(), on_change=lambda usd: self._post(ev.Spent(usd)))
        self.executor: Executor | None = None
        self.audio: AudioIO | None = None
        self.button: ButtonAdapter | None = None
        self.standby: standby_mod.Standby | None = None
        self.tools: ToolRunner | None = None
        self.models: list[ModelLifecycle] = []  # every model the config names (the Realtime one first)
        self.restart = False  # run() returned to be replaced by a fresh process (``standby.reexec``)

    async def run(self) -> int:
        # the speaker's callback runs every 5 ms with ~10 ms of headroom: when the loop thread is busy in Python,
        # let the callback thread have the GIL within 1 ms rather than the default 5 ms (a whole block)
        sys.setswitchinterval(GIL_SWITCH_S)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_due.set)
        async with contextlib.AsyncExitStack() as stack:
            if self.prom is not None:  # first in, last out: the final textfile has the final counts
                await stack.enter_async_context(prom_mod.serving(self.prom, self.cfg.metrics))
            post = self._post
            simulated = self.cfg.button.kind == "simulated"
            button = ButtonAdapter(
                self.cfg.button.pin, self.cfg.led.pin, loop=loop, pwm=self.cfg.led.pwm, simulated=simulated,
                pin_factory=mock_pin_factory() if simulated else None,
                on_press=lambda at_s: post(ev.Pressed(at_s)), on_release=lambda at_s: post(ev.Released(at_s)),
            )
            stack.callback(button.close)
            self.button = button
            audio = AudioIO(
                input_device=self.cfg.audio.input_device, output_device=self.cfg.audio.output_device,
                on_mic=lambda pcm: post(ev.MicBlock(pcm)), on_drained=self._on_drained,
                on_started=lambda at_s: post(ev.PlaybackStarted(at_s)),
                block_ms=self.cfg.audio.block_ms, latency_s=self.cfg.audio.latency_s,
                prebuffer_ms=self.cfg.audio.prebuffer_ms, prebuffer_min_ms=self.cfg.audio.prebuffer_min_ms,
                prebuffer_max_ms=self.cfg.audio.prebuffer_max_ms, preroll_ms=self.cfg.audio.preroll_ms,
                reply_cap_s=self.cfg.turn.reply_cap_s, log=log_mod.get_logger("kioskd.audio"),
            )
            try:
                await audio.start()
            except DeviceError as exc:
                return await self._wait_for_devices(exc, stack)
            stack.push_async_callback(audio.close)
            self.audio = audio
            if standby_mod.attempt() > 0:  # back after an outage: a later one counts afresh
                self._log.info("audio.device_back", attempts=standby_mod.attempt())
                os.environ.pop(standby_mod.ATTEMPT_ENV, None)
            if self._simulated:
                self._url = await self._start_simulator(stack)
                if self.cfg.simulator.fallback:
                    self._chat_sim_url = await self._start_chat_simulator(stack)
            service = systemd.ServiceStatus(on_ready=lambda phase: self._log.info("daemon.ready", phase=phase))
            kiosk = Kiosk(self.checked.settings(realtime_ws.endpoint_of(self._url)), rand=random.random)
            self.models = self._model_lifecycles()
            if self.prom is not None:
                self.prom.expect_arms(kiosk.settings.turn)
            tools = ToolRunner(post, knowledge=self.checked.knowledge, tools=self.checked.tools)
            stack.push_async_callback(tools.close)
            self.tools = tools
            supervisor = AudioSupervisor(audio, post=post, lost=self._device_lost, set_led=button.set_led,
                                         phase=lambda: kiosk.phase.value, on_tick=service.tick)
            executor = Executor(kiosk, audio=audio, set_led=button.set_led, open_link=self._open_link,
                                sinks=[LogSink(self._log), self.status_sink, self.spend,
                                       *([self.prom] if self.prom is not None else [])],
                                publish=lambda p: service.publish(p.phase, p.serving),
                                reopen_speaker=supervisor.reopen, tools=tools,
                                prompts=prompts_mod.load(self.cfg.prompts),
                                open_chat=lambda post: ChatLink(self._chat_options, post))
            self.executor = executor
            executor.post(ev.Spent(self.spend.usd))  # the day's spending so far: the budget applies at once
            control = ControlServer(self._control_socket, self._control)
            await control.start()
            stack.push_async_callback(control.close)
            self._log.info("daemon.started", url=realtime_ws.endpoint_of(self._url), button=self.cfg.button.kind,
                           control_socket=self._control_socket)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._serve(executor), name="executor"),
                         group.create_task(supervisor.health(), name="audio-health"),
                         group.create_task(supervisor.watchdog(), name="watchdog"),
                         group.create_task(self._reloader(), name="reloader"),
                         group.create_task(self.spend.run(), name="spend"),
                         *(group.create_task(m.run(), name=f"model-lifecycle-{m.model}") for m in self.models)]
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
            systemd.notify("STOPPING=1", "STATUS=stopping")
            audio.interrupt()  # fade out whatever is playing
            await executor.close()
            await asyncio.to_thread(self.spend.save)  # whatever the cancelled writer had not written yet
            button.set_led(ev.Led.OFF)
            await asyncio.sleep(0.05)  # let the fade reach the device before the stream closes
        self._log.info("daemon.stopped", exit_code=self._exit_code)
        return self._exit_code

    async def _wait_for_devices(self, missing: DeviceError, stack: contextlib.AsyncExitStack) -> int:
        """Standby (``standby.py``) until the devices are back: then ``restart`` asks ``cli`` for a fresh process."""
        assert self.button is not None
        if self.prom is not None:
            self.prom.set_phase("device_missing")
        queries = {"input": self.cfg.audio.input_device, "output": self.cfg.audio.output_device}
        self.standby = standby_mod.Standby(missing, queries, poll_s=self.cfg.audio.device_poll_s,
                                           set_led=self.button.set_led, log=log_mod.get_logger("kioskd.audio"))
        control = ControlServer(self._control_socket, self._control)
        await control.start()
        stack.push_async_callback(control.close)
        async with asyncio.TaskGroup() as group:
            reloader = group.create_task(self._reloader(), name="reloader")
            self.restart = await self.standby.run(self._stop)
            reloader.cancel()
        if not self.restart:
            self.button.set_led(ev.Led.OFF)
        self._log.info("daemon.stopped", exit_code=self._exit_code, restart=self.restart)
        return self._exit_code

    async def _serve(self, executor: Executor) -> None:
        self._exit(await executor.run())

    def _exit(self, code: int) -> None:
        self._exit_code = code
        self._stop.set()

    def _device_lost(self, code: int) -> None:
        if self.prom is not None:
            self.prom.fault("device_lost")
        self._exit(code)

    def _post(self, inp: ev.Input) -> None:
        if self.executor is not None:
            self.executor.post(inp)

    def _open_link(self, post: Callable[[ev.Input], None], model: str) -> RealtimeLink | RtcLink:
        """A session on the configured transport (read at each connect: a reload's change applies to the next)."""
        r = self.cfg.realtime
        url = realtime_ws.with_model(self._url, model) if model else self._url
        options = LinkOptions(url, auth=r.auth, api_key=self._api_key, connect_timeout_s=r.connect_timeout_s,
                              keepalive_s=r.keepalive_s)
        if r.transport == "webrtc":
            from kioskd.adapters.webrtc import RtcLink

            return RtcLink(options, post, model or realtime_ws.model_of(self._url) or config_mod.realtime_model(self.cfg))
        return RealtimeLink(options, post)

    def _model_lifecycles(self) -> list[ModelLifecycle]:
        """A daily lookup per model the config names: the Realtime ones (the model, its degrade, an A/B arm) at
        the Realtime endpoint, the fallback's at its own."""
        turn, r, f = self.checked.settings(realtime_ws.endpoint_of(self._url)).turn, self.cfg.realtime, self.cfg.fallback
        realtime = dict.fromkeys(arm.model for arm in (turn.main, turn.degrade, turn.ab_arm)
                                 if arm is not None and arm.backend == "realtime")
        out = [ModelLifecycle(self._url, model, auth=r.auth, api_key=self._api_key) for model in realtime]
        if turn.fallback is not None:
            out.append(ModelLifecycle(f.url or self._chat_sim_url, turn.fallback.model, auth=f.auth or r.auth,
                                      api_key=self.checked.fallback_key, setting="fallback.model"))
        return out

    def _chat_options(self) -> ChatOptions:
        """The fallback's endpoint and request, from the config in force (read at each reply: a reload applies
        to the next)."""
        f, link = self.cfg.fallback, self.checked.settings(realtime_ws.endpoint_of(self._url)).link
        request = ChatRequest(f.model, link.voice, link.instructions, link.tools, link.max_output_tokens)
        return ChatOptions(f.url or self._chat_sim_url, request, auth=f.auth or self.cfg.realtime.auth,
                           api_key=self.checked.fallback_key, connect_timeout_s=f.connect_timeout_s,
                           read_timeout_s=f.read_timeout_s)

    def _on_drained(self, dropped_ms: int) -> None:
        assert self.audio is not None
        stats = self.audio.stats()
        keys = ("target_ms", "depth_ms", "jitter_ms", "late_pushes", "late_ms", "overflows", "heard_underflows",
                "output_latency_s")
        playout: dict[str, Any] = {k: stats[k] for k in keys if k in stats}
        self._post(ev.PlaybackDrained(underruns_total=int(stats.get("underruns", 0)), playout=playout,
                                      dropped_ms=dropped_ms))

    async def _reloader(self) -> None:
        """SIGHUP (systemctl reload), one at a time: signals that arrive meanwhile make one more reload."""
        while True:
            await self._reload_due.wait()
            self._reload_due.clear()
            await self._reload()

    async def _reload(self) -> dict[str, Any]:
        """Validate the files first, off the event loop (a reply keeps playing); on any error keep the running
        config. In standby a good file starts afresh (it may name the missing device differently). Returns what
        ``kioskctl reload`` says."""
        async with self._reloading:
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
            out: dict[str, Any]
            try:
                checked = await asyncio.to_thread(checks.load, self._config_path, self._url)
            except ConfigError as exc:
                self._log.warning("config.reload_failed", **log_mod.error_fields(exc))
                out = {"reloaded": False, "error": str(exc)}
            else:
                if self.standby is not None:  # perhaps the device names were fixed: start afresh with the new file
                    self.standby.restart_now()
                    out = {"reloaded": True, "restarting": True}
                else:
                    for warning in checked.warnings:
                        self._log.warning("config.plaintext_key", cause=warning)
                    out = {"reloaded": True, "needs_restart": self._apply(checked)}
            systemd.notify("READY=1", f"STATUS={self._phase()}")
            return out

    def _apply(self, checked: checks.Checked) -> list[str]:
        new, api_key = checked.cfg, checked.api_key
        for key in (api_key, checked.fallback_key):
            if key:
                log_mod.add_secret(key)
        self._api_key = api_key
        self.checked = checked
        restart = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(self.cfg, s)]
        if self.audio is not None and new.turn.reply_cap_s > self.audio.reply_cap_s:
            restart.append("turn.reply_cap_s")  # the longer cap applies now; the playout ring grows at restart
        if new.realtime.url is not None:
            self._url = new.realtime.url
        self.cfg = new
        self._log.info("config.reloaded", source=new.source, needs_restart=restart)
        if self.tools is not None:
            self.tools.update(knowledge=checked.knowledge, tools=checked.tools)
        self._post(ev.Reloaded(checked.settings(realtime_ws.endpoint_of(self._url))))
        return restart

    async def _start_simulator(self, stack: contextlib.AsyncExitStack) -> str:
        from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

        s = self.cfg.simulator
        options = SimOptions(api_key=None, first_delta_delay_ms=s.first_delta_delay_ms, jitter_ms=s.jitter_ms,
                             voice=s.voice, tool_call=s.tool_call, preamble_ms=s.preamble_ms)
        sim: RealtimeSimulator | RtcSimulator
        if self.cfg.realtime.transport == "webrtc":  # the same session core, served over WebRTC
            from kioskd.sim.webrtc_server import RtcSimulator

            sim = RtcSimulator(options)
        else:
            sim = RealtimeSimulator(options)
        await sim.start()
        stack.push_async_callback(sim.close)
        url: str = sim.url
        self._log.info("daemon.simulator", url=url)
        return url

    async def _start_chat_simulator(self, stack: contextlib.AsyncExitStack) -> str:
        from kioskd.sim.chat_server import ChatSimOptions, ChatSimulator

        s = self.cfg.simulator
        sim = ChatSimulator(ChatSimOptions(api_key=None, first_audio_delay_ms=s.first_audio_delay_ms,
                                           voice=s.voice, tool_call=s.tool_call))
        await sim.start()
        stack.push_async_callback(sim.close)
        self._log.info("daemon.chat_simulator", url=sim.url)
        return sim.url

    # ------------------------------------------------------------------------------------------ control

    async def _control(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        button = self.button
        assert button is not None
        if cmd == "press":
            button.press()
            return {"phase": self._phase()}
        if cmd == "release":
            button.release()
            return {"phase": self._phase()}
        if cmd == "status":
            return self.status()
        if cmd == "stats":
            return {**self.status_sink.stats(), "today_usd": self.spend.status().get("today_usd")}
        if cmd == "reload":
            return await self._reload()
        if cmd == "devices":
            return await self._devices()
        if cmd == "selftest":
            return await self._selftest()
        raise KioskError(f"unknown command {cmd!r}")

    async def _devices(self) -> dict[str, Any]:
        """The devices in use, and PortAudio's list as this process sees it (as of its start: a device plugged
        in since shows in ``kioskd devices`` run afresh)."""
        from kioskd.adapters.devices import list_devices

        stats = self.audio.stats() if self.audio is not None else {}
        in_use = {d: {"device": stats.get(f"{d}_device"), "rate_hz": stats.get(f"{d}_rate_hz"),
                      "channels": stats.get(f"{d}_channels")} for d in ("input", "output")}
        out: dict[str, Any] = {"in_use": in_use if self.audio is not None else None,
                               "listing": await asyncio.to_thread(list_devices)}
        if self.standby is not None:
            out["missing"] = self.standby.status().get("missing")
        return out

    async def _selftest(self) -> dict[str, Any]:
        """``kioskctl selftest``, between visitors (``selftest.py``)."""
        from kioskd import selftest

        executor, audio, button = self.executor, self.audio, self.button
        if executor is None or audio is None or button is None:
            raise KioskError(f"no self-test while {self._phase()}: the audio devices are not open")
        if executor.kiosk.turn.phase.value != "idle":
            raise KioskError("a visitor is mid-turn: try again between visitors")
        kiosk = executor.kiosk
        stuck = kiosk.turn.stuck_since_s
        return await selftest.run(
            audio=audio, open_session=self._probe_session, models=[m.state for m in self.models],
            stuck_for_s=None if stuck is None else time.monotonic() - stuck, set_led=button.set_led,
            restore_led=lambda: LED[kiosk.phase])

    async def _probe_session(self) -> str:
        """A session opened on the configured endpoint, transport and key (a link of its own, as the kiosk's),
        closed at its ``session.created`` (its id returned); a server error or the link's end raises."""
        inputs: asyncio.Queue[ev.Input] = asyncio.Queue()
        link = self._open_link(inputs.put_nowait, "")
        link.start()
        try:
            while True:
                inp = await inputs.get()
                if isinstance(inp, ev.SessionCreated):
                    return inp.session_id
                if isinstance(inp, ev.ServerError):
                    raise KioskError(f"server error {inp.code}: {inp.message}")
                if isinstance(inp, ev.Disconnected):
                    raise inp.cause if isinstance(inp.cause, Exception) else KioskError(str(inp.cause))
        finally:
            await link.close()

    def _phase(self) -> str:
        if self.standby is not None:
            return "device_missing"
        return self.executor.kiosk.phase.value if self.executor is not None else "starting"

    def status(self) -> dict[str, Any]:
        if self.standby is not None:
            return {**self.standby.status(), "uptime_s": round(time.monotonic() - self._started_s, 1),
                    "button": self.cfg.button.kind}
        out: dict[str, Any] = self.executor.kiosk.status() if self.executor is not None else {"phase": "starting"}
        out.update(self.status_sink.status())
        out["arms"] = self.status_sink.stats()["arms"]  # release → first sound and cost per turn, by arm
        if self.models:
            out["model"] = self.models[0].state
            out["models"] = [m.state for m in self.models]
        out["cost"] = {**self.spend.status(), "budget_usd": self.cfg.cost.daily_budget_usd,
                       "exhausted": self.executor.kiosk.turn.closed if self.executor is not None else False}
        out["endpoint"] = realtime_ws.endpoint_of(self._url)
        out["uptime_s"] = round(time.monotonic() - self._started_s, 1)
        out["button"] = self.cfg.button.kind
        if self.button is not None:
            out["led"] = self.button.led_pattern.value
        if self.audio is not None:
            out["audio"] = self.audio.stats()
        return out
