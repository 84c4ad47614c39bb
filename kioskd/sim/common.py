"""What the Realtime and the Chat Completions simulators share: the reply's text, ids, one-shot faults, and the
async context manager around ``start()`` / ``close()``."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

Json = dict[str, Any]

DEFAULT_REPLY_TEXT: Final = ("The great hall was built in 1889 for the world fair. "
                             "Its iron roof still spans forty metres without a single column.")
#: what a simulated model looks up when it calls the exhibit's tool
TOOL_QUESTION: Final = "How old is the mosaic?"


class SimServer:
    """The base of a simulator: unique ids, one-shot faults armed at run time, ``async with`` = start/close."""

    def __init__(self, one_shot_faults: frozenset[str]) -> None:
        self._one_shot_faults = one_shot_faults
        self._armed_faults: list[str] = []
        self.faults_fired: list[str] = []  # one-shot faults in the order they happened
        self._tag = secrets.token_hex(3)  # ids from two simulators never collide
        self._counter = itertools.count(1)

    def arm_fault(self, name: str) -> None:
        """Arm a one-shot fault; arming twice makes it happen twice. Thread-safe enough for a caller on another
        thread: list appends are atomic."""
        if name not in self._one_shot_faults:
            raise ValueError(f"unknown one-shot fault {name!r} (known: {', '.join(sorted(self._one_shot_faults))})")
        self._armed_faults.append(name)

    def take_fault(self, name: str) -> bool:
        """True (once per arming) if ``name`` is armed: the fault happens now."""
        if name in self._armed_faults:
            self._armed_faults.remove(name)
            self.faults_fired.append(name)
            return True
        return False

    def new_id(self, prefix: str, sep: str = "_") -> str:
        return f"{prefix}{sep}{self._tag}{next(self._counter):05d}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


async def serve_until_cancelled(sim: SimServer, host: str, port: int, address: Callable[[], str]) -> None:
    """``kioskd simulate``: start ``sim``, print one line ``kioskd simulate: listening on ADDRESS`` (flush; the
    address read once listening, so port 0 shows the real port), run until cancelled, close."""
    await sim.start(host, port)
    try:
        print(f"kioskd simulate: listening on {address()}", flush=True)
        await asyncio.Future()
    finally:
        await sim.close()
