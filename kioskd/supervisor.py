"""The audio supervisor: the periodic checks that keep the audio path honest, and systemd's watchdog.

Every ``HEALTH_PERIOD_S`` it checks for a stall of the whole process (a wake-up more than ``LOOP_LAG_LIMIT_S``
late: overload, swapping, SIGSTOP — stale callbacks then prove nothing, so they get the start-up grace again),
for a lost device (a stream ended by itself, or no callback for ``AUDIO_STALE_S``: PortAudio cannot reopen a lost
USB device in-process, so it says so once and asks the process to exit 1 for systemd's ``Restart=``), and for gaps
heard because the speaker's callbacks come too late (``core/underflow.py``): then it posts ``SpeakerReopenDue`` and
the core says when nothing of a visit plays (``ReopenSpeaker``, carried out by ``reopen``). The watchdog pings
``WATCHDOG=1`` every ``WATCHDOG_USEC``/2 while the audio callbacks are fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from kioskd import log as log_mod
from kioskd.adapters import systemd
from kioskd.adapters.audio import AudioIO
from kioskd.core import events as ev
from kioskd.core.underflow import UnderflowGuard
from kioskd.errors import DeviceError

HEALTH_PERIOD_S: Final = 0.5
AUDIO_STALE_S: Final = 2.0
#: a periodic task may wake this late before the process is taken to have stood still
LOOP_LAG_LIMIT_S: Final = 1.0


class AudioSupervisor:
    """``health()`` and ``watchdog()`` run for the life of the process (cancel them to stop); ``reopen`` carries
    out the core's ``ReopenSpeaker``. ``lost(code)`` is called once when the audio path is gone for good."""

    def __init__(self, audio: AudioIO, *, post: Callable[[ev.Input], None], lost: Callable[[int], None],
                 set_led: Callable[[ev.Led], None], phase: Callable[[], str],
                 on_tick: Callable[[], None] = lambda: None, log: log_mod.Logger | None = None) -> None:
        self._audio = audio
        self._post = post
        self._lost = lost
        self._set_led = set_led
        self._phase = phase
        self._on_tick = on_tick
        self._log = log or log_mod.get_logger("kioskd.audio")
        self._guard = UnderflowGuard(audio.output_latency_s)
        self._grace_until_s = 0.0  # loop time: stale callbacks are not a fault until then (after a stall)
        self._underflows_said = False

    async def health(self) -> None:
        loop = asyncio.get_running_loop()
        last_s = loop.time()
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            self._check_stall(last_s, HEALTH_PERIOD_S)
            self._on_tick()
            reason = self.fault()
            if reason is None:
                self._watch_underflows()
            last_s = loop.time()
            if reason is not None:
                self._log.error("audio.device_lost", cause=reason, input_device=self._audio.device_name("input"),
                                output_device=self._audio.device_name("output"))
                self._set_led(ev.Led.ERROR)
                self._lost(1)
                return

    async def watchdog(self) -> None:
        """A hung event loop cannot ping at all, which is what the watchdog catches; a loop that stalled and runs
        again pings on time (each tick checks for a stall first). A withheld ping is said once per episode."""
        interval_s = systemd.watchdog_interval_s()
        if interval_s is None:
            return
        loop = asyncio.get_running_loop()
        withheld: str | None = None
        last_s = loop.time()
        while True:
            await asyncio.sleep(interval_s)
            self._check_stall(last_s, interval_s)
            reason = self.fault()
            if reason is None:
                if withheld is not None:
                    self._log.info("systemd.watchdog_resumed", after=withheld)
                systemd.notify("WATCHDOG=1")
            elif withheld is None:
                self._log.warning("systemd.watchdog_withheld", cause=reason)
            withheld = reason
            last_s = loop.time()

    def fault(self) -> str | None:
        """What is wrong with the audio path now, or None (also during the grace after a stall)."""
        if asyncio.get_running_loop().time() < self._grace_until_s:
            return None
        return self._audio.fault(time.monotonic(), AUDIO_STALE_S)

    def _check_stall(self, last_s: float, period_s: float) -> None:
        now_s = asyncio.get_running_loop().time()
        lag_s = now_s - last_s - period_s
        if lag_s <= LOOP_LAG_LIMIT_S:
            return
        if now_s >= self._grace_until_s:  # not within the grace of a stall already said
            self._log.warning("daemon.loop_stalled", stalled_s=round(lag_s + period_s, 1), phase=self._phase())
        self._grace_until_s = now_s + AUDIO_STALE_S

    def _watch_underflows(self) -> None:
        to_s = self._guard.observe(time.monotonic(), self._audio.heard_underflows)
        if to_s is None:
            if self._guard.at_limit and not self._underflows_said:
                self._underflows_said = True
                self._log.warning("audio.underflows", device=self._audio.device_name("output"),
                                  latency_s=round(self._audio.output_latency_s, 4),
                                  underflows=self._audio.heard_underflows,
                                  cause="the speaker keeps running dry at the longest device queue kioskd can get: "
                                        "this machine is overloaded or the device is failing")
        else:  # asked every tick until done: the core answers between visits
            self._post(ev.SpeakerReopenDue(to_s))

    async def reopen(self, to_s: float) -> None:
        """Reopen the speaker with a longer device queue (the core chose the moment: between visits). An earcon
        still sounding puts it off to a later tick. Logs the outcome once per raise."""
        if not self._audio.silent:
            return  # asked again at the next tick
        guard = self._guard
        from_s = guard.latency_s
        refused: str | None = None
        try:
            got_s = await self._audio.reopen_output(to_s)
        except DeviceError as exc:
            refused = str(exc)
            try:  # go back to the queue that worked
                await self._audio.reopen_output(from_s)
            except DeviceError:
                self._log.error("audio.device_lost", cause=f"output stream could not be reopened: {exc}",
                                input_device=self._audio.device_name("input"),
                                output_device=self._audio.device_name("output"))
                self._set_led(ev.Led.ERROR)
                self._lost(1)
                return
        if refused is None and got_s > from_s:
            count = guard.raised(got_s)
            self._log.warning("audio.latency_raised", device=self._audio.device_name("output"),
                              from_s=round(from_s, 4), to_s=round(got_s, 4), underflows=count, window_s=guard.window_s,
                              cause=f"the speaker ran dry {count} times in {guard.window_s:.0f} s while playing: "
                                    f"callbacks came too late for a {from_s * 1000:.0f} ms device queue",
                              hint="set audio.latency_s (and audio.block_ms) in the config to start there")
            return
        guard.give_up()
        self._log.warning("audio.latency_refused", device=self._audio.device_name("output"), from_s=round(from_s, 4),
                          asked_s=to_s, latency_s=round(self._audio.output_latency_s, 4),
                          cause=refused or f"the device granted no longer queue than {from_s * 1000:.0f} ms")
