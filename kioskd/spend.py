"""The day's spending: every turn's ``cost_usd`` added up, kept across restarts and power cuts, new each local day.

A sink for the core's notes (``metrics.Sink``): each ``turn.done`` adds its cost in memory, and ``run()`` (a task
the daemon owns) writes the total to ``spend.json`` in the state directory right after, in a thread (an fsync on an
SD card must not hold the event loop while a reply plays), atomically (a temporary file, fsync, rename, fsync of
the directory), so a power cut loses at most the turn being written; ``save()`` writes at shutdown. The directory is systemd's ``$STATE_DIRECTORY`` (the unit's
``StateDirectory=kioskd``: /var/lib/kioskd), else ``$XDG_STATE_HOME/kioskd``, else ``~/.local/state/kioskd``.
A file that cannot be read starts the day at zero, said once (``cost.state_unreadable``); one that cannot be
written is said once (``cost.state_unwritable``) and the count goes on in memory.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any, Final

from kioskd import log as log_mod
from kioskd.core.events import Note

STATE_FILE: Final = "spend.json"
STATE_MAX_BYTES: Final = 4096


def _until_midnight_s() -> float:
    """Seconds to the next local midnight (and a second past it), at most an hour: a clock set or a DST change
    in between is noticed within the hour."""
    now = datetime.now()
    midnight = datetime.combine(now.date() + timedelta(days=1), time())
    return min((midnight - now).total_seconds() + 1.0, 3600.0)


def state_dir(environ: Mapping[str, str] = os.environ) -> str:
    """Where kioskd keeps what must survive a restart (see the module docstring)."""
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    xdg = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "kioskd")


class DailySpend:
    def __init__(self, directory: str, *, today: Callable[[], date] = date.today,
                 on_change: Callable[[float], None] = lambda usd: None, log: log_mod.Logger | None = None) -> None:
        self.path = os.path.join(directory, STATE_FILE)
        self._today = today
        self.on_change = on_change  # told today's total after each turn and at midnight (the core's budget)
        self._log = log or log_mod.get_logger("kioskd.cost")
        self._unwritable_said = False
        self.day, self.usd, self.turns = today(), 0.0, 0
        self._dirty = asyncio.Event()
        self._load()

    def status(self) -> dict[str, Any]:
        self._roll()
        return {"day": self.day.isoformat(), "today_usd": round(self.usd, 6), "turns_today": self.turns}

    def note(self, note: Note) -> None:
        if note.name == "turn.done":
            cost = note.fields.get("cost_usd")
            self.add(float(cost) if isinstance(cost, (int, float)) and cost > 0 else 0.0)

    def add(self, usd: float) -> None:
        self._roll()
        self.usd += usd
        self.turns += 1
        self._dirty.set()
        self.on_change(self.usd)

    async def run(self) -> None:
        """Write each change soon after it is made, off the event loop, and start a new day at local midnight
        (``on_change(0)``); cancel to stop (then ``save()``)."""
        while True:
            try:
                async with asyncio.timeout(_until_midnight_s()):
                    await self._dirty.wait()
            except TimeoutError:
                day = self.day
                self._roll()
                if self.day != day:
                    self.on_change(self.usd)
                continue
            self._dirty.clear()
            await asyncio.to_thread(self.save)

    def _roll(self) -> None:
        today = self._today()
        if today != self.day:  # local midnight passed: a new day's spending
            self.day, self.usd, self.turns = today, 0.0, 0

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(STATE_MAX_BYTES + 1)[:STATE_MAX_BYTES])
            day, usd, turns = date.fromisoformat(data["day"]), float(data["usd"]), int(data.get("turns", 0))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._log.warning("cost.state_unreadable", file=self.path, cause=f"{type(exc).__name__}: {exc}"[:200])
            return
        if day == self.day and usd >= 0:
            self.usd, self.turns = usd, max(turns, 0)

    def save(self) -> None:
        """Write the day's total now (blocking)."""
        directory = os.path.dirname(self.path)
        tmp = f"{self.path}.tmp"
        payload = json.dumps({"day": self.day.isoformat(), "usd": self.usd, "turns": self.turns}).encode()
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            if not self._unwritable_said:
                self._unwritable_said = True
                self._log.warning("cost.state_unwritable", file=self.path, cause=str(exc)[:200])
