"""``kioskctl selftest``: the exhibit checked end to end without a visitor, by the daemon itself.

A second process cannot open a ``hw:`` device the daemon holds, so the daemon runs the checks on its own streams,
between visitors (it refuses while one is mid-turn). Each check is ``{"name", "ok", "detail"}``; the detail is
written for the technician at the exhibit:

- ``speaker``: a 440 Hz tone through the real output, played out by the device (its callbacks ran, the buffer
  drained, no gap was heard).
- ``microphone``: the raw level over a second: digital silence (only zeros: muted, or the wrong device) and
  clipping (over 1 % of samples at full scale: the gain is too high) fail; a quiet room passes.
- ``endpoint``: a real ``session.created`` from the configured URL with the configured key (a session is free
  until a response is asked for), with each model's shutdown date from the model-lifecycle check; an unknown
  model fails.
- ``button``: not stuck (held past the hold cap and not released since).
- ``led``: driven through each of its patterns, then back to the one the phase shows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kioskd.core import events as ev
from kioskd.core.pcm import tone

TONE_MS: Final = 500
MIC_S: Final = 1.0
#: more than this share of samples at full scale is clipping
CLIPPED_MAX: Final = 0.01
LED_STEP_S: Final = 0.1
SPEAKER_TIMEOUT_S: Final = 3.0
ENDPOINT_TIMEOUT_S: Final = 10.0


class Audio(Protocol):
    def play(self, pcm24: Any, item_id: str | None) -> None: ...
    def end_of_reply(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    async def measure_input(self, seconds: float) -> dict[str, float | int]: ...


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


async def speaker(audio: Audio) -> Check:
    before = audio.stats()
    audio.play(tone(440, TONE_MS), None)
    audio.end_of_reply()
    deadline = time.monotonic() + SPEAKER_TIMEOUT_S
    while True:
        await asyncio.sleep(0.05)
        now = audio.stats()
        if now.get("depth_ms", 0) == 0 and now["output_callbacks"] > before["output_callbacks"]:
            break
        if time.monotonic() > deadline:
            return Check("speaker", False, f"the tone did not play out within {SPEAKER_TIMEOUT_S:g} s: "
                         f"{now['output_callbacks'] - before['output_callbacks']} output callbacks ran "
                         f"(device {now.get('output_device')!r})")
    gaps = now["heard_underflows"] - before["heard_underflows"]
    where = f"{now.get('output_device')!r} at {now.get('output_rate_hz')} Hz"
    if gaps:
        return Check("speaker", False, f"the tone played on {where} with {gaps} gap(s) heard")
    return Check("speaker", True, f"{TONE_MS} ms of 440 Hz played on {where}")


async def microphone(audio: Audio) -> Check:
    level = await audio.measure_input(MIC_S)
    where = repr(audio.stats().get("input_device"))
    figures = f"RMS {level['rms_dbfs']} dBFS, peak {level['peak_dbfs']} dBFS"
    if not level["samples"]:
        return Check("microphone", False, f"no audio came from {where} in {MIC_S:g} s")
    if not level["nonzero_share"]:
        return Check("microphone", False, f"digital silence from {where}: only zeros (muted, or the wrong device)")
    if level["clipped_share"] > CLIPPED_MAX:
        return Check("microphone", False, f"clipping on {where}: {level['clipped_share']:.1%} of samples at full "
                     f"scale ({figures}); lower the input gain (alsamixer)")
    return Check("microphone", True, f"{where}: {figures} over {MIC_S:g} s")


async def endpoint(open_session: Callable[[], Awaitable[str]], models: list[dict[str, Any]]) -> Check:
    """``open_session`` opens a session and returns its id (raising on any failure)."""
    started = time.monotonic()
    try:
        session_id = await asyncio.wait_for(open_session(), ENDPOINT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - every failure is the check's detail
        return Check("endpoint", False, f"no session: {type(exc).__name__}: {str(exc)[:300]}")
    ms = round((time.monotonic() - started) * 1000)
    lifecycle = "; ".join(f"{m.get('model')}: " + (f"shutdown {m['shutdown_date']}" if m.get("shutdown_date") else
                                                    m.get("problem") or ("no shutdown date" if m.get("checked")
                                                                         else "not looked up"))
                          for m in models)
    unknown = [m.get("model") for m in models if m.get("problem") == "model.unknown"]
    if unknown:
        return Check("endpoint", False, f"the service does not know {', '.join(map(str, unknown))} ({lifecycle})")
    return Check("endpoint", True, f"session.created ({session_id}) in {ms} ms; {lifecycle}")


def button(stuck_for_s: float | None) -> Check:
    if stuck_for_s is not None:
        return Check("button", False, f"held down for {stuck_for_s:.0f} s and not released: jammed, or wired "
                     "closed")
    return Check("button", True, "not stuck")


async def led(set_led: Callable[[ev.Led], None], restore: Callable[[], ev.Led]) -> Check:
    shown: list[str] = []
    try:
        for pattern in ev.Led:
            set_led(pattern)
            shown.append(pattern.value)
            await asyncio.sleep(LED_STEP_S)
    except Exception as exc:  # noqa: BLE001
        return Check("led", False, f"driving it failed at {shown[-1:] or ['the first']}: {type(exc).__name__}: "
                     f"{exc}")
    finally:
        set_led(restore())
    return Check("led", True, f"driven through {', '.join(shown)}")


async def run(*, audio: Audio, open_session: Callable[[], Awaitable[str]], models: list[dict[str, Any]],
              stuck_for_s: float | None, set_led: Callable[[ev.Led], None],
              restore_led: Callable[[], ev.Led]) -> dict[str, Any]:
    """All checks, in order; ``ok`` only if all pass."""
    checks = [await speaker(audio), await microphone(audio), await endpoint(open_session, models),
              button(stuck_for_s), await led(set_led, restore_led)]
    return {"checks": [c.json() for c in checks], "passed": all(c.ok for c in checks)}
