"""Watchdog pings around a stalled process: how late the WATCHDOG=1 ping comes, against systemd's deadline.

For each stall length a fresh `kioskd run` starts on the null sinks, as systemd starts it: ``NOTIFY_SOCKET`` is a
real AF_UNIX datagram socket read by this process and ``WATCHDOG_USEC`` is the deadline (6 s by default, so a
ping every 3 s). Once kioskd is idle and a fresh ping has come, the whole process is stopped (SIGSTOP, as an
overloaded Pi or a debugger would) ``--lead-s`` before its next ping is due, so the stall spans a ping's tick
(the hard case), for the stall's length, then continued (SIGCONT); pings are collected until ``--after`` have
come after the resume.

The baseline row is the same run with no stall: the normal gap between pings. Per row it prints the steady gap
(median of the gaps that do not span the stall), the gap that spans it, the largest gap, the deadline's margin
over the largest gap (negative: systemd would have killed the kiosk), the ``daemon.loop_stalled`` warning's
``stalled_s`` ("-": none; it is the time since the periodic task that noticed last ran, so it can exceed the stall
itself), whether a ping was withheld or the audio device taken for lost, and the phase at the end. No ping
can cover a stall that ends more than the deadline after the last ping: with the defaults, the 4 s stall (begun
2.7 s after a ping) must show a negative margin; that row shows the limit, not a fault.

Nothing is asserted (test_daemon.py asserts the behaviour). Run it after ./scripts/setup (under a minute):

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/watchdog_stall.py [--stalls 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, wait_for


@dataclass(frozen=True)
class Row:
    """One run's figures; ``stall_s`` 0 is the baseline (no stall)."""

    stall_s: float
    stopped_s: float
    gaps_s: list[float]
    loop_stalled_s: float | None
    withheld: int
    device_lost: int
    phase: str
    exit_code: int

    @property
    def across_s(self) -> float:
        """The gap from the last ping before the stall to the first after it (for the baseline: the same tick)."""
        return self.gaps_s[0]

    @property
    def steady_s(self) -> float:
        return statistics.median(self.gaps_s[1:])


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's, stamping each WATCHDOG=1 on arrival."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.pings: list[float] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop:
            try:
                datagram = self._sock.recv(4096).decode()
            except OSError:
                continue
            if "WATCHDOG=1" in datagram:
                self.pings.append(time.monotonic())

    def close(self) -> None:
        self._stop = True
        self._thread.join(2.0)
        self._sock.close()


def measure(stall_s: float, deadline_s: float, lead_s: float, after: int) -> Row:
    """Start kioskd, stall it for ``stall_s`` (0: not at all) across a ping's tick, and collect the pings."""
    interval_s = deadline_s / 2
    with tempfile.TemporaryDirectory(prefix="kioskd-wd-") as tmp:
        work = Path(tmp)
        notify = NotifySocket(work / "notify.sock")
        kiosk = KioskdProcess(work, f"{NULL_SINK_AUDIO}log:\n  format: json\n",
                              env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(int(deadline_s * 1e6))})
        stopped_s = 0.0
        try:
            kiosk.wait_phase("idle", timeout_s=30)
            seen = len(notify.pings)
            wait_for(lambda: len(notify.pings) > seen, "a fresh watchdog ping", 2 * deadline_s)
            reference = len(notify.pings) - 1
            time.sleep(max(0.0, notify.pings[reference] + interval_s - lead_s - time.monotonic()))
            resumed = len(notify.pings)
            if stall_s > 0:
                os.kill(kiosk.proc.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                time.sleep(stall_s)
                resumed = len(notify.pings)
                os.kill(kiosk.proc.pid, signal.SIGCONT)
                stopped_s = time.monotonic() - stopped
            wait_for(lambda: len(notify.pings) >= resumed + after, f"{after} pings after the stall",
                     stall_s + (after + 1) * interval_s + 10)
            phase = kiosk.phase()
        finally:
            code = kiosk.stop()
            notify.close()
        pings = notify.pings[reference:]
        stalled = kiosk.events("daemon.loop_stalled")
        return Row(stall_s=stall_s, stopped_s=stopped_s, gaps_s=[b - a for a, b in zip(pings, pings[1:])],
                   loop_stalled_s=float(stalled[0]["stalled_s"]) if stalled else None,
                   withheld=len(kiosk.events("systemd.watchdog_withheld")),
                   device_lost=len(kiosk.events("audio.device_lost")), phase=phase, exit_code=code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stalls", default="1,2,4", help="stall lengths in seconds, comma-separated")
    parser.add_argument("--watchdog-usec", type=int, default=6_000_000, help="WATCHDOG_USEC: systemd's deadline")
    parser.add_argument("--lead-s", type=float, default=0.3,
                        help="how long before the next ping is due the stall starts")
    parser.add_argument("--after", type=int, default=2, help="pings to collect after the resume")
    args = parser.parse_args()
    if args.after < 2:
        parser.error("--after must be at least 2: the steady gap is measured after the stall")
    stalls = [float(s) for s in args.stalls.split(",") if s.strip()]
    deadline_s = args.watchdog_usec / 1e6
    started = time.monotonic()
    rows: list[Row] = []
    for stall_s in [0.0, *stalls]:
        label = "baseline (no stall)" if stall_s == 0 else f"stall {stall_s:g} s"
        print(f"  {label} ...", flush=True)
        try:
            rows.append(measure(stall_s, deadline_s, args.lead_s, args.after))
        except (TimeoutError, RuntimeError) as exc:
            print(f"  {label}: failed: {exc}", flush=True)
    print(f"kioskd watchdog around a SIGSTOP stall: WATCHDOG_USEC {args.watchdog_usec} (deadline {deadline_s:g} s, "
          f"a ping every {deadline_s / 2:g} s), stall starts {args.lead_s:g} s before a ping is due; "
          f"{len(rows)} runs in {time.monotonic() - started:.0f} s")
    header = (f"{'stall_s':>8} {'stopped_s':>9} {'pings':>5} {'steady_gap_s':>12} {'gap_across_s':>12} "
              f"{'max_gap_s':>9} {'deadline_s':>10} {'margin_s':>8} {'loop_stalled_s':>14} {'withheld':>8} "
              f"{'device_lost':>11} {'phase':>6} {'exit':>4}")
    print(header)
    for row in rows:
        name = "baseline" if row.stall_s == 0 else f"{row.stall_s:g}"
        said = "-" if row.loop_stalled_s is None else f"{row.loop_stalled_s:.1f}"
        largest = max(row.gaps_s)
        print(f"{name:>8} {row.stopped_s:9.2f} {len(row.gaps_s) + 1:5d} {row.steady_s:12.2f} {row.across_s:12.2f} "
              f"{largest:9.2f} {deadline_s:10.2f} {deadline_s - largest:8.2f} {said:>14} {row.withheld:8d} "
              f"{row.device_lost:11d} {row.phase:>6} {row.exit_code:4d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
