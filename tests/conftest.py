"""Shared test fixtures.

The null-sink audio environment (scripts/audio-env) is set up here, before anything imports sounddevice,
because PortAudio enumerates devices at import.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent

if "ALSA_CONFIG_PATH" not in os.environ:
    _out = subprocess.run([str(REPO / "scripts" / "audio-env")], check=True, capture_output=True, text=True).stdout
    for _line in _out.splitlines():
        _key, _, _value = _line.removeprefix("export ").partition("=")
        os.environ[_key] = _value.strip("'")

#: one unit of waiting, in seconds; scale it up on a slow machine with KIOSKD_TEST_UNIT
UNIT_S = float(os.environ.get("KIOSKD_TEST_UNIT", "1.0"))

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_units: float = 30) -> T:
    """Run one coroutine to completion on a fresh event loop, failing after ``timeout_units`` units."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_units * UNIT_S)

    return asyncio.run(bounded())


async def wait_until(cond: Callable[[], bool], what: str = "the condition", units: float = 10,
                     poll_s: float = 0.01) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``units`` units."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units * UNIT_S
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll_s)


class LogRecorder:
    """A structlog-shaped logger double: every call kept as ``records`` (level, event, fields); ``lines`` is the
    same without the level."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        if level.startswith("_"):
            raise AttributeError(level)
        return lambda event, **fields: self.records.append((level, event, fields))

    @property
    def lines(self) -> list[tuple[str, dict[str, Any]]]:
        return [(event, fields) for _, event, fields in self.records]


@pytest.fixture
def mock_factory() -> Iterator[Any]:
    """gpiozero's own MockFactory (PWM-capable pins), swapped in and restored afterwards."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    saved = Device.pin_factory
    factory = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved
