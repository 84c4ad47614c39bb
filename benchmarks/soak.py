"""Soak: many turns of a real `kioskd run` with faults mixed in, then what it cost.

Each turn is a visitor's question; before some turns the simulator is armed with a one-shot fault (the link
dropped mid-reply, the next handshakes refused with HTTP 429, a server `error` inside the reply). Prints turns
served, faults survived, turns lost (no whole answer), and kioskd's RSS and open file descriptors at the start
and at the end — growth there is a leak. Nothing is asserted. Run it after ./scripts/setup:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/soak.py --turns 20
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from kioskd.core.pcm import tone
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, SimThread, write_wav
from kioskd.sim.realtime_server import SimOptions

FAULTS = [[], [], ["drop_mid_reply"], ["error_mid_reply"], ["refuse_429", "refuse_429", "drop_mid_reply"]]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kioskd-soak-"))
    question = write_wav(work / "q.wav", tone(300, 300, 48000, 0.4), 48000)
    sim = SimThread(SimOptions(voice="tone", reply_ms=800, first_delta_delay_ms=50, speedup=4.0))
    kiosk = KioskdProcess(work, f"realtime:\n  url: {sim.sim.url}\n"
                                f"{NULL_SINK_AUDIO}"
                                "log:\n  format: json\n")
    served = lost = 0
    armed: list[str] = []
    started = time.monotonic()
    try:
        kiosk.wait_phase("idle")
        pid = kiosk.proc.pid
        rss_start, fds_start = rss_kib(pid), open_fds(pid)
        for _ in range(args.turns):
            faults = rng.choice(FAULTS)
            for fault in faults:
                sim.sim.arm_fault(fault)
            armed += faults
            before = len(kiosk.events("turn.done"))
            try:
                kiosk.ask(question)
                kiosk.wait_phase("idle", timeout_s=30)
                time.sleep(0.2)
            except TimeoutError:
                pass
            done = kiosk.events("turn.done")[before:]
            outcome = "served" if any(d["outcome"] == "answered" for d in done) else "lost"
            if outcome == "served":
                served += 1
            else:
                lost += 1
            print(f"  turn {served + lost:3d}: faults {faults or '-'}: {outcome}, phase {kiosk.phase()}", flush=True)
            if outcome == "lost":
                kiosk.wait_phase("idle", timeout_s=60)  # let it recover before the next visitor
        rss_end, fds_end = rss_kib(pid), open_fds(pid)
    finally:
        code = kiosk.stop()
        sim.close()
    fired = sim.sim.faults_fired
    print(f"kioskd soak: {args.turns} turns in {time.monotonic() - started:.0f} s, seed {args.seed}")
    print(f"turns served (whole answer heard): {served}")
    print(f"turns lost: {lost} (a drop mid-reply loses that turn by design: the visitor hears the apology)")
    print(f"faults fired: {len(fired)} of {len(armed)} armed — "
          + ", ".join(f"{name} ×{fired.count(name)}" for name in sorted(set(fired))))
    print(f"disconnects survived: {len(kiosk.events('ws.disconnected'))}; "
          f"server errors logged: {len(kiosk.events('ws.server_error'))}; bugs: {len(kiosk.events('turn.bug'))}")
    print(f"RSS: {rss_start / 1024:.1f} MiB at start, {rss_end / 1024:.1f} MiB at end")
    print(f"open fds: {fds_start} at start, {fds_end} at end")
    print(f"exit code on SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
