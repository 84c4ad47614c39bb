"""While an audio device is missing: stay up, say so once, look for it, and start afresh when it is back.

A kiosk must never give up on its own. A pulled USB dongle, or one not yet plugged in at boot, used to make
kioskd exit at once, and systemd's start limit then left the unit ``failed`` for good. Now ``Daemon.run`` hands
over to ``Standby`` when the audio cannot start: the error LED, ``kioskctl status`` naming the missing device,
one ``audio.device_missing`` line, READY and the watchdog fed (the process is healthy: it is waiting, by
design). Every ``audio.device_poll_s`` a short child process enumerates the devices afresh (PortAudio's list is
frozen at import in this process, reference ``pi-audio.md`` §2.4); when both are found, the daemon returns and
``cli`` replaces the process with a fresh one (``os.execv``: same PID, so systemd sees no restart and no start
limit is spent). A reload in standby does the same, since it may have fixed the device names.

Pacing: the fresh process counts its attempts in ``$KIOSKD_DEVICE_WAIT``. Within one outage the looks slow down
(doubling up to ``POLL_CAP_S``), so a device that is listed but cannot be opened never becomes a restart loop,
and only the first attempt logs ``audio.device_missing`` at error level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

from kioskd import log as log_mod
from kioskd.adapters import systemd
from kioskd.core import events as ev
from kioskd.errors import DeviceError

ATTEMPT_ENV: Final = "KIOSKD_DEVICE_WAIT"
POLL_CAP_S: Final = 60.0
#: a probe child that takes longer is stuck in PortAudio (a half-gone USB device): killed, the device not found
PROBE_TIMEOUT_S: Final = 20.0


def attempt(environ: Mapping[str, str] = os.environ) -> int:
    """How many fresh starts this outage has had (0: the first)."""
    try:
        return max(0, int(environ.get(ATTEMPT_ENV, "0")))
    except ValueError:
        return 0


def poll_period_s(base_s: float, attempt_no: int) -> float:
    return float(min(base_s * 2.0 ** min(attempt_no, 16), max(base_s, POLL_CAP_S)))


async def probe(queries: dict[str, str | None]) -> dict[str, str | None]:
    """Run the device probe in a fresh process: for each kind, None if found, else why not (cut to 500
    characters). A probe stuck in PortAudio is killed after PROBE_TIMEOUT_S; cancelling kills it too."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskd.adapters.devices", "probe", json.dumps(queries),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        return {kind: f"the device probe took over {PROBE_TIMEOUT_S:g} s" for kind in queries}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        result = json.loads(out[:65536])
        return {kind: (None if result[kind] is None else str(result[kind])[:500]) for kind in queries}
    except (ValueError, KeyError, TypeError):
        return {kind: f"the device probe failed (exit {proc.returncode})" for kind in queries}


class Standby:
    """``run(stop)`` returns True when the devices are back (or a reload asks for a fresh start), False when
    ``stop`` was set."""

    def __init__(self, missing: DeviceError, queries: dict[str, str | None], *, poll_s: float,
                 set_led: Callable[[ev.Led], None], log: log_mod.Logger | None = None,
                 environ: MutableMapping[str, str] = os.environ) -> None:
        self.missing = missing
        self._queries = queries
        self._attempt = attempt(environ)
        self._period_s = poll_period_s(poll_s, self._attempt)
        self._set_led = set_led
        self._log = log or log_mod.get_logger("kioskd.audio")
        self._environ = environ
        self._restart = False
        self._wake = asyncio.Event()
        self._since_s = time.monotonic()
        self.looks = 0

    def status(self) -> dict[str, Any]:
        return {"phase": "device_missing", "led": ev.Led.ERROR.value,
                "missing": {"direction": self.missing.direction, "device": self.missing.device,
                            "cause": self.missing.cause},
                "attempt": self._attempt, "looks": self.looks, "poll_s": self._period_s,
                "missing_for_s": round(time.monotonic() - self._since_s, 1)}

    def restart_now(self) -> None:
        """A reload changed what is looked for: start afresh at once."""
        self._restart = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> bool:
        self._set_led(ev.Led.ERROR)
        fields = {"direction": self.missing.direction, "device": self.missing.device, "cause": self.missing.cause,
                  "attempt": self._attempt, "poll_s": self._period_s}
        if self._attempt == 0:  # said once an outage, not once every fresh start
            self._log.error("audio.device_missing", **fields)
        else:
            self._log.debug("audio.device_missing", **fields)
        service = systemd.ServiceStatus(environ=self._environ)
        service.publish(f"device missing: {self.missing}"[:200], serving=True)  # alive and waiting, by design
        async with asyncio.TaskGroup() as group:
            helpers = [group.create_task(self._feed_watchdog(service), name="standby-watchdog"),
                       group.create_task(self._wake_on(stop), name="standby-stop")]
            try:
                return await self._look(stop)
            finally:
                for task in helpers:
                    task.cancel()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _look(self, stop: asyncio.Event) -> bool:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._period_s):
                    await self._wake.wait()
            if stop.is_set():
                return False
            if self._restart:
                self._log.info("audio.device_recheck", cause="the config was reloaded")
                return True
            self.looks += 1
            found = await probe(self._queries)
            if all(cause is None for cause in found.values()):
                self._log.info("audio.device_found", attempt=self._attempt, looks=self.looks,
                               missing_for_s=round(time.monotonic() - self._since_s, 1))
                return True

    async def _feed_watchdog(self, service: systemd.ServiceStatus) -> None:
        interval_s = systemd.watchdog_interval_s(self._environ)
        while True:
            await asyncio.sleep(interval_s or 1.0)
            service.tick()  # READY=1 again if the first datagram was dropped
            if interval_s is not None:
                systemd.notify("WATCHDOG=1", environ=self._environ)


def reexec(environ: MutableMapping[str, str] = os.environ) -> None:
    """Replace this process with a fresh kioskd (same arguments, same PID), counting the attempt."""
    environ[ATTEMPT_ENV] = str(attempt(environ) + 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
