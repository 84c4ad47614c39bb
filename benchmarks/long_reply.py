"""A long reply delivered faster than real time: how much of it is heard.

The Realtime API delivers reply audio faster than real time (reference/pi-audio.md §7.1), so a long answer piles
up in the playout buffer. This plays one reply of ``--reply-s`` (60) seconds of a 1 kHz tone, pushed in 100 ms
deltas at ``--speedup`` (4×) real time, through a real ``AudioIO`` on the PulseAudio null sinks, records the
speaker sink's monitor (what the visitor hears) and prints how many seconds of it sounded, what the buffer
dropped and the ``audio.overflow`` warnings — for kioskd's buffer (sized for ``turn.reply_cap_s``, 90 s) and, in
the same process, for the previous fixed 30 s buffer as the baseline. Takes about two minutes (real time).

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/long_reply.py [--reply-s 60 --speedup 4]

Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Final

import numpy as np

from kioskd.adapters.audio import PLAYOUT_SLACK_S, AudioIO
from kioskd.core.pcm import ms_to_samples, tone
from kioskd.core.settings import TurnSettings
from kioskd.sim.harness import Room

DELTA_MS: Final = 100
GAP_SAMPLES: Final = Room.RATE_HZ // 200  # 5 ms of exact zeros at the monitor: a gap, not a zero crossing


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    warning = info


async def one(reply_cap_s: float, reply_s: float, speedup: float) -> dict[str, Any]:
    room = await asyncio.to_thread(Room)
    drained: list[int] = []
    lines = Lines()
    audio = AudioIO(input_device="kiosk_microphone", output_device="kiosk_speaker", on_mic=lambda pcm: None,
                    on_drained=drained.append, reply_cap_s=reply_cap_s, log=lines)
    try:
        await audio.start()
        room.take()  # what the monitor delivered before the reply: silence
        reply = tone(1000, reply_s * 1000)
        step = ms_to_samples(DELTA_MS)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, start in enumerate(range(0, reply.size, step)):
            await asyncio.sleep(max(0.0, t0 + k * DELTA_MS / 1000 / speedup - loop.time()))
            audio.play(reply[start:start + step], "item_1")
        delivered_s = loop.time() - t0
        audio.end_of_reply()
        while not drained:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the device queue plays out
        stats = audio.stats()
    finally:
        await audio.close()
        await asyncio.to_thread(room.close)
    _, x = room.take()
    sounding = np.flatnonzero(x)
    span = int(sounding[-1]) - int(sounding[0]) + 1 if sounding.size else 0
    steps = np.diff(sounding)
    gaps = steps[steps > GAP_SAMPLES] - 1  # silences inside the reply (a tone's own zeros are single samples)
    heard_s, span_s = (span - int(gaps.sum())) / Room.RATE_HZ, span / Room.RATE_HZ
    warnings = [f for e, f in lines.lines if e == "audio.overflow"]
    return {"capacity_s": stats["capacity_s"], "delivered_s": delivered_s, "heard_s": heard_s, "span_s": span_s,
            "overflows": stats["overflows"], "overflow_ms": stats["overflow_ms"], "drained_dropped_ms": drained[0],
            "warnings": warnings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reply-s", type=float, default=60.0)
    p.add_argument("--speedup", type=float, default=4.0)
    args = p.parse_args()
    cap_s = TurnSettings().reply_cap_s
    print(f"one {args.reply_s:g} s reply in {DELTA_MS} ms deltas at {args.speedup:g}x real time, through AudioIO on "
          f"the null sinks; recorded at the speaker's monitor: span = first to last sound, heard = span less "
          f"silences of 5 ms or more")
    print(f"{'buffer':<34} {'capacity':>9} {'delivered in':>13} {'heard':>13} {'span':>7} {'dropped':>9} "
          f"{'overflow warnings':>18}")
    for name, reply_cap_s in ((f"kioskd (sized for reply_cap_s {cap_s:g} s)", cap_s),
                              ("baseline: the old fixed 30 s ring", 30.0 - PLAYOUT_SLACK_S)):
        started = time.monotonic()
        r = asyncio.run(one(reply_cap_s, args.reply_s, args.speedup))
        warned = ", ".join(f"{w['dropped_ms']} ms" for w in r["warnings"]) or "none"
        print(f"{name:<34} {r['capacity_s']:>7.1f} s {r['delivered_s']:>11.1f} s "
              f"{r['heard_s']:>5.1f} of {args.reply_s:>4.1f} s {r['span_s']:>5.1f} s {r['overflow_ms'] / 1000:>7.1f} s "
              f"{r['overflows']:>4} pushes, {warned}  ({time.monotonic() - started:.0f} s run)")


if __name__ == "__main__":
    main()
