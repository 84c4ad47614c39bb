"""kioskd vs a naive baseline client, measured where the visitor is: on the speaker sink's monitor.

For each delivery profile of the simulator (no jitter, 20 ms jitter, 100 ms spikes on every 5th delta, all at the
simulator's default 4× real time as the real API delivers; and 20 ms jitter paced at real time, the stress case),
runs the same push-to-talk visit twice — once against a real `kioskd run` child process, once against
benchmarks/baseline.py (the naive client of the common samples, also a child process) — and prints one table per
profile with a kioskd and a baseline column:
  - release → first audible sample, p50 / p95, the server's share of it (response.create received → first audio
    delta sent, as the simulator timed it for that reply, the first delta's own jitter included) and the
    client-added part: the difference, reply by reply;
  - underruns per reply: gaps > 10 ms between the first and the last audible sample of each full reply, heard in
    the recording (the replies are a steady tone, so a gap is silence), plus kioskd's own playout-buffer count and
    PortAudio's output-underflow count (late callbacks: the device queue ran dry);
  - barge-in press → speaker silent: every 2nd turn is interrupted mid-reply by a press; measured from the press
    to the last loud sample in the recording (then the visitor asks again and that reply is measured too);
  - CPU % of one core while a reply streams (phase speaking → idle) and while idle (4 s after the turns), from
    /proc/<pid>/stat (utime + stime, all threads), next to the rig's floor: a process holding the same two streams
    open with empty callbacks (benchmarks/rig_floor.py --cpu-s), and RSS / peak RSS from /proc/<pid>/status.
Figures are printed, nothing is asserted. Run it after ./scripts/setup, with no test run using the same sinks:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/turn_latency.py

`--kioskd-audio block_ms=10 --kioskd-audio latency_s=0.03` tries other audio settings; `--speedup 1` paces every
profile at real time. Null sinks deliver bursty audio and render ahead (reference pi-audio.md §8): absolute figures
carry some measurement noise; compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import numpy as np

from kioskd.config import AudioConfig
from kioskd.core.pcm import tone
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, Room, SimThread, speak, wait_for, write_wav
from kioskd.sim.realtime_server import SimOptions
from rig_floor import CLK_TCK, stat_ticks  # the sibling script: run as a script, its folder is on sys.path

LOUD: Final = 1000  # int16: the reply tone peaks near 10000; the idle sink is exact zeros
GAP_MS: Final = 10
BASELINE: Final = Path(__file__).with_name("baseline.py")
#: simulator delivery profiles: SimOptions overrides. The first three deliver at the simulator's default pace
#: (4× real time, as the real API does: reference pi-audio.md §7.1); the last paces deltas at real time, the
#: stress case where every millisecond of jitter reaches the speaker unless the client buffers it.
PROFILES: Final[dict[str, dict[str, float]]] = {
    "jitter0": {"jitter_ms": 0.0},
    "jitter20": {"jitter_ms": 20.0},
    "spikes100": {"spike_ms": 100.0, "spike_every": 5},
    "jitter20-paced": {"jitter_ms": 20.0, "speedup": 1.0},
}
PROFILE_TITLES: Final = {"jitter0": "no jitter", "jitter20": "20 ms jitter per delta",
                         "spikes100": "100 ms spike on every 5th delta",
                         "jitter20-paced": "20 ms jitter per delta, deltas paced at real time"}
RIG_FLOOR: Final = Path(__file__).with_name("rig_floor.py")


# ------------------------------------------------------------------------------------------- the recording

def first_sound_s(times: np.ndarray, pcm: np.ndarray, after_s: float) -> float | None:
    loud = np.nonzero((times > after_s) & (np.abs(pcm.astype(np.int32)) > LOUD))[0]
    return float(times[loud[0]]) if loud.size else None


def gaps_in_reply(pcm: np.ndarray, rate_hz: int) -> int:
    """Silent stretches longer than GAP_MS between the first and the last audible sample."""
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > LOUD)[0]
    if loud.size < 2:
        return 0
    # a tone crosses zero twice a period: judge silence over windows of 2 ms
    window = rate_hz // 500
    body = np.abs(pcm[loud[0]:loud[-1]].astype(np.int32))
    n = body.size // window
    quiet = body[: n * window].reshape(n, window).max(axis=1) < LOUD // 4
    gaps, run = 0, 0
    for q in quiet:
        run = run + 1 if q else 0
        if run * 2 == GAP_MS + 2:  # count each gap once, when it passes GAP_MS
            gaps += 1
    return gaps


def record_until_silent(room: Room, after_s: float, quiet_s: float = 0.2,
                        timeout_s: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Keep taking the room's recording until it has been quiet for ``quiet_s`` after the last loud sample
    later than ``after_s`` (time.time clock)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        parts.append(room.take())
        times = np.concatenate([t for t, _ in parts])
        pcm = np.concatenate([p for _, p in parts])
        loud = times[(times > after_s) & (np.abs(pcm.astype(np.int32)) > LOUD)]
        last_s = float(loud[-1]) if loud.size else after_s
        if times.size and times[-1] - last_s >= quiet_s:
            break
    return np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts])


# ------------------------------------------------------------------------------------------- the clients

class Client(Protocol):
    name: str
    pid: int

    def press(self) -> None: ...
    def release(self) -> None: ...
    def phase(self) -> str: ...
    def buffer_underruns(self) -> int | None: ...
    def device_underflows(self) -> int | None: ...
    def stop(self) -> None: ...


class Kioskd:
    """A real `kioskd run`. Its phase is read from its own `turn.phase` log lines, not by polling the control
    socket, so that measuring does not cost it CPU."""

    name = "kioskd"

    def __init__(self, work: Path, url: str, audio: dict[str, str]) -> None:
        extra = "".join(f"  {key}: {value}\n" for key, value in audio.items())
        self.proc = KioskdProcess(work, f"realtime:\n  url: {url}\n"
                                        f"{NULL_SINK_AUDIO}"
                                        f"  earcons: false\n{extra}log:\n  format: json\n")
        self.proc.wait_phase("idle")
        self.pid = self.proc.proc.pid
        self._done_seen = len([d for d in self.proc.events("turn.done") if d["outcome"] == "answered"])

    def press(self) -> None:
        self.proc.ctl("press")

    def release(self) -> None:
        self.proc.ctl("release")

    def phase(self) -> str:
        if self.proc.proc.poll() is not None:
            raise RuntimeError(f"kioskd exited:\n{self.proc.tail()}")
        phases = self.proc.events("turn.phase")
        return str(phases[-1]["to"]) if phases else "idle"

    def buffer_underruns(self) -> int | None:
        """The playout buffer's own underrun count for the last reply heard in full, if a new one was logged."""
        done = [d for d in self.proc.events("turn.done") if d["outcome"] == "answered"]
        if len(done) == self._done_seen:
            return None
        self._done_seen = len(done)
        return int(done[-1].get("underruns") or 0)

    def device_underflows(self) -> int | None:
        """PortAudio's output-underflow flags seen so far (the device queue ran dry: a late callback)."""
        return int(self.proc.ctl("status")["audio"]["output_underflows"])

    def stop(self) -> None:
        self.proc.stop()


class Baseline:
    """benchmarks/baseline.py as a child process, driven over stdin, its phase read from its stdout."""

    name = "baseline"

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BASELINE), "--url", url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        self.lines: list[str] = []
        threading.Thread(target=self._read, name="baseline-out", daemon=True).start()
        wait_for(lambda: self.phase() == "idle", "the baseline to start", 30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.rstrip())

    def notes(self) -> list[str]:
        return [line[5:] for line in self.lines if line.startswith("note ")]

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def press(self) -> None:
        self._send("press")

    def release(self) -> None:
        self._send("release")

    def phase(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError("baseline exited:\n" + "\n".join(self.lines[-10:]))
        phases = [line.split()[1] for line in self.lines if line.startswith("phase ")]
        return phases[-1] if phases else "starting"

    def buffer_underruns(self) -> int | None:
        return None

    def device_underflows(self) -> int | None:
        return None

    def stop(self) -> None:
        try:
            self._send("quit")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def wait_phase(client: Client, *phases: str, timeout_s: float = 30.0) -> None:
    wait_for(lambda: client.phase() in phases, f"{client.name} phase {'/'.join(phases)}", timeout_s)


def cpu_s(pid: int) -> tuple[float, float]:
    """utime + stime in seconds of the whole process (all threads) and of its main thread alone (the event loop:
    protocol, resampling, turn logic; the rest is PortAudio's and the ALSA pulse plugin's threads)."""
    return stat_ticks(f"/proc/{pid}/stat") / CLK_TCK, stat_ticks(f"/proc/{pid}/task/{pid}/stat") / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# ------------------------------------------------------------------------------------------- one visit

@dataclass
class Figures:
    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # the simulator's first-delta delay of each timed reply
    silent_ms: list[float] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    buffer_underruns: list[int] = field(default_factory=list)
    streaming_cpu_s: float = 0.0
    streaming_loop_cpu_s: float = 0.0
    streaming_wall_s: float = 0.0
    idle_cpu_pct: float = float("nan")
    idle_loop_cpu_pct: float = float("nan")
    memory_kib: dict[str, int] = field(default_factory=dict)
    no_sound: int = 0
    device_underflows: int | None = None
    notes: list[str] = field(default_factory=list)


def ask(client: Client, question: Path, room: Room) -> float:
    """Press, speak, release (room emptied just before); returns the release time on time.time()'s clock once the
    client speaks (or is idle again)."""
    client.press()
    speak(question)
    room.take()
    released_s = time.time()
    client.release()
    wait_phase(client, "speaking", "idle")
    return released_s


def newest_server_delay_ms(sim: SimThread) -> float:
    """The simulator's first-delta delay (response.create in → first delta out) of the newest reply, in ms."""
    delays = list(sim.sim.first_delta_delay_s.values())
    return 1000 * delays[-1] if delays else float("nan")


def time_reply(fig: Figures, sim: SimThread, sound_s: float, released_s: float) -> None:
    fig.latency_ms.append((sound_s - released_s) * 1000)
    fig.server_ms.append(newest_server_delay_ms(sim))


def hear_reply(client: Client, sim: SimThread, room: Room, released_s: float, fig: Figures, verbose: bool) -> None:
    """Wait for the reply to end, then score it: release → first sound, gaps, CPU while it streamed."""
    (cpu0, loop0), wall0 = cpu_s(client.pid), time.monotonic()
    wait_phase(client, "idle")
    cpu1, loop1 = cpu_s(client.pid)
    fig.streaming_cpu_s += cpu1 - cpu0
    fig.streaming_loop_cpu_s += loop1 - loop0
    fig.streaming_wall_s += time.monotonic() - wall0
    times, pcm = record_until_silent(room, released_s)
    sound_s = first_sound_s(times, pcm, released_s)
    underruns = client.buffer_underruns()
    if sound_s is None:
        fig.no_sound += 1
        return
    gaps = gaps_in_reply(pcm[times > released_s], Room.RATE_HZ)
    time_reply(fig, sim, sound_s, released_s)
    fig.gaps.append(gaps)
    if underruns is not None:
        fig.buffer_underruns.append(underruns)
    if verbose:
        print(f"    {client.name}: release → sound {fig.latency_ms[-1]:.0f} ms (server {fig.server_ms[-1]:.0f} ms), "
              f"gaps {gaps}, buffer {underruns}")


def visit(client: Client, sim: SimThread, room: Room, question: Path, turns: int, barge_after_s: float,
          verbose: bool) -> Figures:
    fig = Figures()
    for i in range(turns):
        released_s = ask(client, question, room)
        if i % 2 == 0:
            hear_reply(client, sim, room, released_s, fig, verbose)
            continue
        # barge-in: press mid-reply, wait until the speaker is silent, then ask again and hear that reply
        time.sleep(barge_after_s)
        pressed_s = time.time()
        client.press()
        times, pcm = record_until_silent(room, pressed_s)
        sound_s = first_sound_s(times, pcm, released_s)
        if sound_s is None or sound_s > pressed_s:
            fig.no_sound += 1  # the reply had not started when the press came: no barge-in to measure
        else:
            time_reply(fig, sim, sound_s, released_s)
            loud = times[(times > pressed_s) & (np.abs(pcm.astype(np.int32)) > LOUD)]
            fig.silent_ms.append(max(0.0, (float(loud[-1]) - pressed_s) * 1000) if loud.size else 0.0)
            if verbose:
                print(f"    {client.name}: release → sound {fig.latency_ms[-1]:.0f} ms, "
                      f"press → silent {fig.silent_ms[-1]:.0f} ms")
        client.buffer_underruns()  # an interrupted reply logs no turn.done; keep the count in step
        speak(question)
        room.take()
        released_s = time.time()
        client.release()
        wait_phase(client, "speaking", "idle")
        hear_reply(client, sim, room, released_s, fig, verbose)
    # idle after the turns: the first seconds after start-up still burn CPU (imports, streams starting)
    time.sleep(1.0)
    (cpu0, loop0), wall0 = cpu_s(client.pid), time.monotonic()
    time.sleep(4.0)
    (cpu1, loop1), wall_s = cpu_s(client.pid), time.monotonic() - wall0
    fig.idle_cpu_pct, fig.idle_loop_cpu_pct = 100 * (cpu1 - cpu0) / wall_s, 100 * (loop1 - loop0) / wall_s
    fig.memory_kib = memory_kib(client.pid)
    fig.device_underflows = client.device_underflows()
    return fig


# ------------------------------------------------------------------------------------------- the report

def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def p50_p95(values: list[float]) -> str:
    return f"{pct(values, 50):.0f} / {pct(values, 95):.0f} ms" if values else "—"


def client_added_ms(fig: Figures) -> list[float]:
    """Release → first sound minus the server's share (response.create in → first delta out) of each reply."""
    return [total - server for total, server in zip(fig.latency_ms, fig.server_ms, strict=True)]


def table(title: str, figs: dict[str, Figures], floor_cpu_pct: float) -> None:
    def cpu(pct: float) -> str:
        return f"{pct:.1f} % ({pct - floor_cpu_pct:+.1f})"

    rows: list[tuple[str, list[str], str]] = [
        ("release → first sound, p50 / p95", [p50_p95(f.latency_ms) for f in figs.values()], ""),
        ("  server: response.create → first delta", [p50_p95(f.server_ms) for f in figs.values()], ""),
        ("client-added, p50 / p95", [p50_p95(client_added_ms(f)) for f in figs.values()],
         "≤ 40 / ≤ 80 ms at 20 ms jitter"),
        (f"gaps > {GAP_MS} ms heard per reply (mean, max)",
         [f"{np.mean(f.gaps):.2f}, {max(f.gaps)}" if f.gaps else "—" for f in figs.values()],
         "0 at 20 ms jitter"),
        ("playout-buffer underruns per reply",
         [f"{np.mean(f.buffer_underruns):.2f}" if f.buffer_underruns else "n/a" for f in figs.values()], ""),
        ("PortAudio output underflows, whole visit",
         ["n/a" if f.device_underflows is None else str(f.device_underflows) for f in figs.values()], ""),
        ("barge-in press → silent, p50 / p95", [p50_p95(f.silent_ms) for f in figs.values()], "≤ 30 ms"),
        ("CPU % of a core, streaming (± rig floor)",
         [cpu(100 * f.streaming_cpu_s / f.streaming_wall_s) if f.streaming_wall_s else "—" for f in figs.values()],
         "≤ 3 %"),
        ("CPU % of a core, idle (± rig floor)", [cpu(f.idle_cpu_pct) for f in figs.values()], ""),
        ("  of which the event-loop thread, streaming",
         [f"{100 * f.streaming_loop_cpu_s / f.streaming_wall_s:.1f} %" if f.streaming_wall_s else "—"
          for f in figs.values()], ""),
        ("  of which the event-loop thread, idle", [f"{f.idle_loop_cpu_pct:.1f} %" for f in figs.values()], ""),
        ("RSS (peak), MiB", [f"{f.memory_kib.get('VmRSS', 0) / 1024:.0f} ({f.memory_kib.get('VmHWM', 0) / 1024:.0f})"
                             for f in figs.values()], ""),
        ("replies timed / heard in full / silent",
         [f"{len(f.latency_ms)} / {len(f.gaps)} / {f.no_sound}" for f in figs.values()], ""),
    ]
    names = list(figs)
    print(f"\n{title}")
    print(f"  {'figure':44s}" + "".join(f"{n:>20s}" for n in names) + "   target")
    for label, cells, target in rows:
        print(f"  {label:44s}" + "".join(f"{c:>20s}" for c in cells) + (f"   {target}" if target else ""))


def rig_cpu_floor_pct(block_ms: int, latency_s: float) -> float:
    """CPU % of a process holding the same two streams open with empty callbacks (benchmarks/rig_floor.py)."""
    out = subprocess.run([sys.executable, str(RIG_FLOOR), "--cpu-s", "5", "--block-ms", str(block_ms),
                          "--latency-s", str(latency_s)], capture_output=True, text=True, timeout=60).stdout
    values = [float(line.split()[1]) for line in out.splitlines() if line.startswith("cpu_pct ")]
    return values[0] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8, help="turns per profile per client (every 2nd barges in)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help=f"comma-separated, of {', '.join(PROFILES)}")
    parser.add_argument("--clients", default="kioskd,baseline")
    parser.add_argument("--delay-ms", type=float, default=200.0, help="simulator's first-delta delay")
    parser.add_argument("--delta-ms", type=int, default=100, help="audio per delta")
    parser.add_argument("--speedup", type=float, default=None,
                        help="delivery speed, × real time, for every profile (default: the profile's own)")
    parser.add_argument("--kioskd-audio", action="append", default=[], metavar="KEY=VALUE",
                        help="an audio: setting for kioskd, e.g. block_ms=5 (repeatable)")
    parser.add_argument("--reply-ms", type=int, default=1500)
    parser.add_argument("--barge-after-ms", type=int, default=500, help="press this long after the reply starts")
    parser.add_argument("--verbose", action="store_true", help="print every reply")
    args = parser.parse_args()

    audio = dict(item.split("=", 1) for item in args.kioskd_audio)
    block_ms = int(audio.get("block_ms", AudioConfig().block_ms))
    latency_s = float(audio.get("latency_s", AudioConfig().latency_s))
    work = Path(tempfile.mkdtemp(prefix="kioskd-bench-"))
    question = write_wav(work / "q.wav", tone(300, 400, 48000, 0.4), 48000)
    room = Room()
    print(f"kioskd vs baseline: {args.turns} turns per profile per client (every 2nd interrupted by a press "
          f"{args.barge_after_ms} ms into the reply, then asked again); simulator: first delta {args.delay_ms:g} ms "
          f"after response.create, {args.delta_ms} ms deltas, {args.reply_ms} ms tone replies; audio through "
          f"PulseAudio null sinks, speaker monitor recorded; kioskd audio: block {block_ms} ms, latency "
          f"{latency_s} s{''.join(f', {k} {v}' for k, v in audio.items() if k not in ('block_ms', 'latency_s'))}")
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    print(f"kioskd at {rev or 'unknown revision'}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}")
    floor_pct = rig_cpu_floor_pct(block_ms, latency_s)
    print(f"rig CPU floor: {floor_pct:.1f} % of a core for the same two streams open with empty callbacks "
          "(benchmarks/rig_floor.py --cpu-s 5); CPU rows show kioskd's total and (±) its difference from it")
    baseline_notes: list[str] = []
    try:
        for profile in args.profiles.split(","):
            overrides = dict(PROFILES[profile], **({} if args.speedup is None else {"speedup": args.speedup}))
            options = SimOptions(voice="tone", tone_hz=1000, reply_ms=args.reply_ms, delta_ms=args.delta_ms,
                                 first_delta_delay_ms=args.delay_ms, **overrides)
            figs: dict[str, Figures] = {}
            for name in args.clients.split(","):
                sim = SimThread(options)  # a fresh simulator per client: the same seeded delivery schedule
                client: Client | None = None
                started = time.monotonic()
                try:
                    client = Kioskd(work, sim.sim.url, audio) if name == "kioskd" else Baseline(sim.sim.url)
                    room.take()
                    figs[name] = visit(client, sim, room, question, args.turns, args.barge_after_ms / 1000,
                                       args.verbose)
                    if isinstance(client, Baseline):
                        baseline_notes = client.notes()
                finally:
                    if client is not None:
                        client.stop()
                    sim.close()
                print(f"  {PROFILE_TITLES[profile]}: {name} done in {time.monotonic() - started:.0f} s", flush=True)
            table(f"Profile {profile}: {PROFILE_TITLES[profile]}, {options.speedup:g}× real time", figs, floor_pct)
    finally:
        room.close()
    for note in baseline_notes:
        print(f"\nbaseline: {note}")
    print(f"rig CPU floor again after the run: {rig_cpu_floor_pct(block_ms, latency_s):.1f} % of a core "
          f"(at the start: {floor_pct:.1f} %; the spread is the noise of every CPU figure above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
