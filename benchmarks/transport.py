"""The museum Wi-Fi (issue 14 item 4): kioskd and the naive baseline over an impaired link, the simulator not on
loopback but in another network namespace.

Topology (made here, removed on exit and at start if a crashed run left it):

    netns kb-kiosk: kb-k 10.200.0.1/24  <— veth —>  netns kb-server: kb-s 10.200.0.2/24
    kioskd run / benchmarks/baseline.py             kioskd's Realtime simulator (this file, `serve`)

Both ends are private to the two namespaces; nothing leaves them. The PulseAudio null sinks and kioskd's control
socket are Unix sockets on the shared filesystem, so the clients in the kiosk namespace play and record as usual
(the environment of scripts/audio-env is passed through), and this process records the speaker monitor (Room).

Impairment of the veth, the same in both directions (reference webrtc.md §3.2; this kernel has no netem):
  - random loss: ``iptables-legacy -A OUTPUT -o VETH -m statistic --mode random --probability P -j DROP`` in each
    namespace;
  - one-way delay + jitter in userspace: one delayer process per namespace (this file, `delay`) binds NFQUEUE
    (``-j NFQUEUE --queue-num N`` after the drop rule) with the NetfilterQueue package and accepts each packet at
    its due time, delay + uniform(0, jitter), never before the packet ahead of it (order kept, as one Wi-Fi
    link would);
  - bursty loss (``loss_model: bursty``; iptables' statistic match is random only): the delayer drops instead, by a
    seeded two-state Gilbert-Elliott chain per direction with the cell's average loss and bursts of BURST_PACKETS
    packets on average (every packet in the bad state is lost, none in the good one);
  - a bottleneck: ``tc qdisc add dev VETH root tbf rate R burst 4kb latency 400ms`` on each veth.
TCP's congestion control is the namespaces' (inherited from the host; printed in the header; ``--tcp-cc``).

Per cell and client (the ``transport`` column: ``websocket`` for kioskd, ``websocket-pcmu`` for kioskd sending the
question as G.711, ``websocket-auto`` for kioskd with ``audio.input_format: auto``, ``baseline-ws`` for the naive
client, ``baseline-ws-raw`` for it without permessage-deflate, ``webrtc`` for kioskd over WebRTC; see CLIENTS):
release → the question complete at the server (the client's ``at_server_event``, ``input_audio_buffer.commit`` over
WebRTC,
``response.create`` on a WebSocket, received by the simulator, timed on CLOCK_MONOTONIC, which the namespaces
share), release → first sound on the speaker monitor p50/p95, gaps > 10 ms per reply, reply audio not heard (the
tone's length less what was audible, mean per reply), turns lost (no sound within the timeout, or the client never
left waiting), barge-in press → speaker silent (every BARGE_EVERY-th turn is interrupted by a press
BARGE_AFTER_S after its first sound, or, if that falls in a gap, when it sounds again; then asked again), the
client process's CPU (% of one core, over the cell from its first press) and RSS at the end of its cell, and the
TCP payload a turn moved each way (``ss``).

Setup (benchmark only, root): ``apt-get install iptables libnetfilter-queue-dev build-essential`` and
``.venv/bin/pip install NetfilterQueue`` (``--install-deps`` does both). Then, with no test run on the sinks:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/transport.py --quick [--json out.json]

``--quick``: 5 cells × 4 turns a client (a few minutes); the full run: every cell of issue 14, 20 turns.
``--cells 5:60:10,3b:30:5`` runs only those cells (loss %, a ``b`` for bursty; one-way delay; jitter; [tbf kbit/s]).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

NS_KIOSK: Final = "kb-kiosk"
NS_SERVER: Final = "kb-server"
VETH_KIOSK: Final = "kb-k"
VETH_SERVER: Final = "kb-s"
IP_KIOSK: Final = "10.200.0.1"
IP_SERVER: Final = "10.200.0.2"
PORT: Final = 8765
QUEUE_NUM: Final = 7
IPT: Final = "iptables-legacy"  # the nft backend has no NFQUEUE here (reference §3.2)
BASELINE: Final = Path(__file__).with_name("baseline.py")
REPLY_MS: Final = 1500
BARGE_EVERY: Final = 4  # every 4th turn (the 4th, 8th, ...) is interrupted
BARGE_AFTER_S: Final = 1.0  # that long after its first sound (the reply is 1.5 s)
#: a noise floor (σ in int16 LSB, about -68 dBFS) on the question and the reply tones. A pure tone is far more
#: compressible than speech: under permessage-deflate (the naive client's websockets default; kioskd offers no
#: compression) a tone's base64 frames shrink to 2 % of their size, espeak-ng speech's to 60 %. With σ = 12 the
#: tones shrink like speech (60 %), so neither client gets a wire advantage that real audio would not give it;
#: the floor is far below the loudness thresholds the recording is judged by.
NOISE_LSB: Final = 12.0


BURST_PACKETS: Final = 3.0  # the bursty cells' mean burst length (Gilbert-Elliott, see run_delayer)


@dataclass(frozen=True)
class Cell:
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbit: int | None = None
    loss_model: str = "random"  # random: iptables statistic; bursty: Gilbert-Elliott in the delayer

    def title(self) -> str:
        loss = f"{self.loss_model} loss {self.loss_pct:g} %"
        if self.loss_model == "bursty" and self.loss_pct:
            loss += f" (bursts of {BURST_PACKETS:g} packets on average)"
        parts = [loss, f"delay {self.delay_ms:g}±{self.jitter_ms:g} ms each way"]
        if self.rate_kbit:
            parts.append(f"tbf {self.rate_kbit} kbit/s")
        return ", ".join(parts)


QUICK_CELLS: Final = (Cell(), Cell(3, 30, 5), Cell(5, 60, 10), Cell(3, 30, 5, loss_model="bursty"),
                      Cell(1, 30, 5, 1000))
FULL_CELLS: Final = (tuple(Cell(loss, delay, delay / 6) for delay in (0, 30, 60) for loss in (0, 1, 3, 5))
                     + tuple(Cell(loss, delay, delay / 6, loss_model="bursty") for delay in (30, 60) for loss in (3, 5))
                     + (Cell(0, 30, 5, 1000), Cell(3, 30, 5, 1000)))


def speechlike(pcm: np.ndarray, seed: int) -> np.ndarray:
    """``pcm`` with the NOISE_LSB noise floor (seeded): as compressible on the wire as speech."""
    noise = np.random.default_rng(seed).normal(0.0, NOISE_LSB, pcm.size)
    return np.clip(pcm.astype(np.float64) + noise, -32768, 32767).astype(np.int16)


def wire_bytes() -> tuple[int, int]:
    """(acked bytes sent, bytes received) over the kiosk namespace's established TCP connections to the
    simulator."""
    # established only: a previous client's closing connection must not count (its counters vanish with it)
    out = in_ns(NS_KIOSK, "ss", "-tinH", "state", "established", "dst", IP_SERVER, check=False).stdout
    up = sum(int(m) for m in re.findall(r"bytes_acked:(\d+)", out))
    down = sum(int(m) for m in re.findall(r"bytes_received:(\d+)", out))
    return up, down


# ------------------------------------------------------------------------------------------- root plumbing

def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def teardown() -> None:
    """Remove the namespaces (their veth ends, iptables rules and qdiscs go with them)."""
    for ns in (NS_KIOSK, NS_SERVER):
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # processes this benchmark started in its own namespace
            sh("kill", pid, check=False)
        sh("ip", "netns", "del", ns, check=False)


def setup_link() -> None:
    teardown()
    sh("ip", "netns", "add", NS_KIOSK)
    sh("ip", "netns", "add", NS_SERVER)
    sh("ip", "link", "add", VETH_KIOSK, "netns", NS_KIOSK, "type", "veth", "peer", "name", VETH_SERVER,
       "netns", NS_SERVER)
    for ns, dev, ip in ((NS_KIOSK, VETH_KIOSK, IP_KIOSK), (NS_SERVER, VETH_SERVER, IP_SERVER)):
        in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        in_ns(ns, "ip", "link", "set", dev, "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")


def set_tcp_cc(name: str) -> None:
    """The TCP congestion control of both namespaces (each has its own; a new one inherits the host's)."""
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    if name not in allowed:  # a namespace may only pick what the host allows: not changed here (host-wide)
        raise SystemExit(f"--tcp-cc {name}: the host allows only {', '.join(allowed)} in a namespace "
                         "(net.ipv4.tcp_allowed_congestion_control)")
    for ns in (NS_KIOSK, NS_SERVER):
        in_ns(ns, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={name}")


def tcp_cc() -> str:
    return in_ns(NS_KIOSK, "sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip()


class Impairment:
    """One cell's impairment on both veth ends; ``close`` undoes it (the delayers stop, the rules go)."""

    def __init__(self, cell: Cell) -> None:
        self.delayers: list[subprocess.Popen[str]] = []
        self.ends = ((NS_KIOSK, VETH_KIOSK), (NS_SERVER, VETH_SERVER))
        bursty = cell.loss_model == "bursty" and cell.loss_pct > 0
        for seed, (ns, dev) in enumerate(self.ends):
            in_ns(ns, IPT, "-F", "OUTPUT")
            in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            if cell.loss_pct and not bursty:
                in_ns(ns, IPT, "-A", "OUTPUT", "-o", dev, "-m", "statistic", "--mode", "random",
                      "--probability", f"{cell.loss_pct / 100:.4f}", "-j", "DROP")
            if cell.delay_ms or cell.jitter_ms or bursty:
                loss = ["--burst-loss-pct", str(cell.loss_pct), "--burst-packets", str(BURST_PACKETS),
                        "--seed", str(7 + seed)] if bursty else []
                proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, "delay",
                                         "--delay-ms", str(cell.delay_ms), "--jitter-ms", str(cell.jitter_ms),
                                         *loss], stdout=subprocess.PIPE, text=True)
                self.delayers.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "bound":
                    raise RuntimeError("the NFQUEUE delayer did not start (NetfilterQueue installed? see --help)")
                in_ns(ns, IPT, "-A", "OUTPUT", "-o", dev, "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))
            if cell.rate_kbit:
                in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{cell.rate_kbit}kbit",
                      "burst", "4kb", "latency", "400ms")

    def close(self) -> str:
        """Undo the impairment; returns what the delayers dropped (bursty loss), e.g. ``5 of 100, 4 of 90``."""
        for ns, dev in self.ends:
            in_ns(ns, IPT, "-F", "OUTPUT", check=False)
            in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        drops = []
        for proc in self.delayers:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            drops += [line.removeprefix("dropped ") for line in (out or "").splitlines()
                      if line.startswith("dropped ")]
        return ", ".join(drops)


# ------------------------------------------------------------------------------------------- the helpers run
# inside a namespace: `delay` (the NFQUEUE delayer) and `serve` (the simulator)

class GilbertElliott:
    """Seeded two-state loss: GOOD loses nothing, BAD loses every packet. With an average loss ``p`` and a mean
    burst of ``b`` packets: P(BAD → GOOD) = 1/b, P(GOOD → BAD) = p / (b (1 - p)), so BAD's share is ``p``."""

    def __init__(self, loss_pct: float, burst_packets: float, seed: int) -> None:
        p = loss_pct / 100
        if not 0 <= p < 1 or burst_packets < 1:
            raise ValueError(f"need 0 <= loss < 100 % and bursts >= 1 packet, got {loss_pct} and {burst_packets}")
        self.leave_bad = 1 / burst_packets
        self.enter_bad = p / (burst_packets * (1 - p))
        self.bad = False
        self.rng = random.Random(seed)

    def lose(self) -> bool:
        """One packet: is it lost?"""
        self.bad = self.rng.random() < (1 - self.leave_bad if self.bad else self.enter_bad)
        return self.bad


def run_delayer(delay_ms: float, jitter_ms: float, burst_loss_pct: float = 0.0, burst_packets: float = 1.0,
                seed: int = 7) -> int:
    from netfilterqueue import NetfilterQueue  # type: ignore[import-not-found]

    rng = random.Random(seed)
    loss = GilbertElliott(burst_loss_pct, burst_packets, seed + 1000) if burst_loss_pct else None
    held: list[tuple[float, int, Any]] = []
    cond = threading.Condition()
    last_due = [0.0]
    seq = [0]
    counts = [0, 0]  # packets seen, dropped

    def on_packet(pkt: Any) -> None:
        counts[0] += 1
        if loss is not None and loss.lose():
            counts[1] += 1
            pkt.drop()
            return
        if not (delay_ms or jitter_ms):
            pkt.accept()
            return
        due = max(time.monotonic() + (delay_ms + rng.uniform(0, jitter_ms)) / 1000, last_due[0])
        last_due[0] = due
        with cond:
            seq[0] += 1
            heapq.heappush(held, (due, seq[0], pkt))
            cond.notify()

    def release() -> None:
        while True:
            with cond:
                while not held:
                    cond.wait()
                due, _, pkt = held[0]
                wait = due - time.monotonic()
                if wait > 0:
                    cond.wait(wait)
                    continue
                heapq.heappop(held)
            pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(QUEUE_NUM, on_packet, max_len=8192)
    threading.Thread(target=release, daemon=True).start()
    print("bound", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()
        if loss is not None:
            print(f"dropped {counts[1]} of {counts[0]}", flush=True)
    return 0


#: the client events whose arrival the simulator reports (``event TYPE T``): what marks the question complete at
#: the server for each kind of client (CLIENTS' ``at_server_event``)
AT_SERVER_EVENTS: Final = ("input_audio_buffer.commit", "response.create")


def run_server(host: str, port: int, reply_ms: int, transport: str = "websocket") -> int:
    """The Realtime simulator (over ``transport``: the WebSocket one, or the WebRTC one sharing its session core)
    on ``host``; prints ``event TYPE T`` (time.monotonic()) for each
    AT_SERVER_EVENTS event received, and after each response.create ``sent TYPE=COUNT/CHARS ...``: what the client
    sent since the previous one."""
    from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

    async def main() -> None:
        options = SimOptions(voice="tone", tone_hz=1000, reply_ms=reply_ms, delta_ms=100, first_delta_delay_ms=200.0)
        sim: Any
        if transport == "webrtc":
            from kioskd.sim.webrtc_server import RtcSimulator

            sim = RtcSimulator(options)
        else:
            sim = RealtimeSimulator(options)
        await sim.start(host, port)
        sim.reply_pcm = speechlike(sim.reply_pcm, 2)  # every reply the same: each client hears the same audio
        print(f"listening {sim.url}", flush=True)
        seen = 0
        kinds: dict[str, list[int]] = {}  # event type -> [count, characters] since the last response.create
        try:
            while True:
                await asyncio.sleep(0.01)
                for event, t in zip(sim.client_events[seen:], sim.client_times[seen:]):
                    kind = str(event.get("type"))
                    counts = kinds.setdefault(kind, [0, 0])
                    counts[0] += 1
                    counts[1] += len(json.dumps(event))
                    if kind in AT_SERVER_EVENTS:
                        print(f"event {kind} {t:.6f}", flush=True)
                    if kind == "response.create":
                        print("sent " + " ".join(f"{k}={n}/{c}" for k, (n, c) in kinds.items()), flush=True)
                        kinds.clear()
                seen = len(sim.client_events)
        finally:
            await sim.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


#: how to start each kind of simulator in the server namespace: a command line after ``python transport.py`` that
#: prints ``listening URL`` and then the ``event``/``sent`` lines of run_server: the WebSocket simulator, and the
#: WebRTC one (reference webrtc.md §3.1) on the next port.
SIMULATORS: Final[dict[str, list[str]]] = {
    "ws": ["serve", "--host", IP_SERVER, "--port", str(PORT), "--reply-ms", str(REPLY_MS)],
    "webrtc": ["serve", "--host", IP_SERVER, "--port", str(PORT + 1), "--reply-ms", str(REPLY_MS),
               "--transport", "webrtc"],
}


class Server:
    """A simulator in the server namespace, the times of the AT_SERVER_EVENTS it received collected."""

    def __init__(self, kind: str = "ws") -> None:
        if kind not in SIMULATORS:
            raise RuntimeError(f"no {kind} simulator in this benchmark yet")
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_SERVER, sys.executable, __file__,
                                      *SIMULATORS[kind]],
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = line.split()[1]
        self.times: dict[str, list[float]] = {kind: [] for kind in AT_SERVER_EVENTS}
        self.sent: list[tuple[float, str]] = []  # (the response.create's time, what the client sent before it)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            head, _, rest = line.strip().partition(" ")
            if head == "event":
                kind, _, t = rest.partition(" ")
                self.times.setdefault(kind, []).append(float(t))
            elif head == "sent" and self.times["response.create"]:
                self.sent.append((self.times["response.create"][-1], rest))

    def first_after(self, kind: str, t: float) -> float | None:
        """When the first ``kind`` event at or after ``t`` (time.monotonic(), shared by the namespaces) arrived."""
        later = [c for c in self.times.get(kind, []) if c >= t]
        return later[0] if later else None

    def sent_before(self, t: float) -> str:
        """What the client sent before the first response.create at or after ``t``."""
        create = self.first_after("response.create", t)
        return next((text for c, text in self.sent if c == create), "")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------- the clients,
# started in the kiosk namespace

def real_pid(pid: int) -> int:
    """The client's own process: ``ip netns exec`` runs it in place (exec, same PID) unless it forks; then its
    first Python descendant."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            if "python" in Path(f"/proc/{p}/comm").read_text() or "python" in os.readlink(f"/proc/{p}/exe"):
                return p
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return pid


class Usage:
    """CPU (utime + stime, all threads) and RSS of one process from /proc: ``start()``, then ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = real_pid(pid)
        self.cpu_pct: float | None = None
        self.rss_mb: float | None = None
        self.rss_peak_mb: float | None = None
        self._t0 = (0.0, 0.0)

    def _cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._t0 = (self._cpu_s(), time.monotonic())

    def stop(self) -> None:
        try:
            cpu, wall = self._cpu_s() - self._t0[0], time.monotonic() - self._t0[1]
            status = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                          if ":" in line)
        except OSError:  # the process died: no figures
            return
        self.cpu_pct = 100 * cpu / wall if wall > 0 else None
        self.rss_mb = int(status["VmRSS"].split()[0]) / 1024
        self.rss_peak_mb = int(status["VmHWM"].split()[0]) / 1024


class NetnsKioskd:
    name = "kioskd"

    def __init__(self, work: Path, url: str, realtime: str = "", audio: str = "") -> None:
        """``realtime`` / ``audio``: more YAML lines for those sections (two-space indented, newline-ended)."""
        from kioskd.adapters.control import request
        from kioskd.sim.harness import NULL_SINK_AUDIO

        self._request = request
        self.socket = str(work / "control.sock")
        config = work / "kioskd.yaml"
        config.write_text(f"control:\n  socket: {self.socket}\nrealtime:\n  url: {url}\n  allow_plaintext: true\n"
                          f"{realtime}{NULL_SINK_AUDIO}  earcons: false\n{audio}log:\n  format: json\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1", STATE_DIRECTORY=str(work / "state"))
        env.pop("OPENAI_API_KEY", None)
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_KIOSK, sys.executable, "-m", "kioskd", "run",
                                      "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.pid = self.proc.pid
        threading.Thread(target=self._read, daemon=True).start()
        from kioskd.sim.harness import wait_for

        wait_for(lambda: any(line.get("event") == "ws.ready" for line in self.lines) or self.proc.poll() is not None,
                 "kioskd's Realtime session", 40)
        if self.proc.poll() is not None:
            raise RuntimeError(f"kioskd exited: {self.tail()}")
        wait_for(lambda: self.phase() == "idle", "kioskd idle", 30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.rstrip()}
            self.lines.append(line if isinstance(line, dict) else {"event": "raw", "text": raw.rstrip()})

    def tail(self, n: int = 12) -> str:
        return "\n".join(json.dumps(line) for line in self.lines[-n:])

    def press(self) -> None:
        self._request(self.socket, "press", timeout_s=5.0)

    def release(self) -> None:
        self._request(self.socket, "release", timeout_s=5.0)

    def phase(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kioskd exited:\n{self.tail()}")
        phases = [line for line in self.lines if line.get("event") == "turn.phase"]
        return str(phases[-1]["to"]) if phases else "idle"

    def turn_note(self) -> str:
        """kioskd's own view of its last turn (turn.done), for --verbose."""
        done = [line for line in self.lines if line.get("event") == "turn.done"]
        if not done:
            return ""
        d, playout = done[-1], done[-1].get("playout") or {}
        return (f"; kioskd: first delta {d.get('release_to_first_delta_ms')} ms, first sound "
                f"{d.get('release_to_first_sound_ms')} ms, underruns {d.get('underruns')}, target "
                f"{playout.get('target_ms')} ms, jitter {playout.get('jitter_ms')} ms")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NetnsBaseline:
    name = "baseline"

    def __init__(self, url: str, *flags: str) -> None:
        from kioskd.sim.harness import wait_for

        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_KIOSK, sys.executable, str(BASELINE), "--url", url,
                                      *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.phase() == "idle", "the baseline to start", 40)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.rstrip())

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

    def turn_note(self) -> str:
        return ""

    def stop(self) -> None:
        try:
            self._send("quit")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class ClientSpec:
    """One client of the table: how to start it against a simulator's URL, which simulator it talks to, and which
    client event marks its question complete at the server."""

    transport: str  # the rows' transport column
    start: Callable[[Path, str], Any]  # (its work directory, the simulator's URL) -> a started client
    simulator: str = "ws"  # a SIMULATORS key
    at_server_event: str = "response.create"  # an AT_SERVER_EVENTS type


#: --clients names. Over WebRTC the question's audio is the RTP stream itself: the commit is what ends it at the
#: server.
CLIENTS: Final[dict[str, ClientSpec]] = {
    "kioskd": ClientSpec("websocket", lambda work, url: NetnsKioskd(work, url)),
    "kioskd-pcmu": ClientSpec("websocket-pcmu",
                              lambda work, url: NetnsKioskd(work, url, audio="  input_format: pcmu\n")),
    "kioskd-auto": ClientSpec("websocket-auto",
                              lambda work, url: NetnsKioskd(work, url, audio="  input_format: auto\n")),
    "kioskd-webrtc": ClientSpec("webrtc", lambda work, url: NetnsKioskd(work, url, "  transport: webrtc\n"),
                                simulator="webrtc", at_server_event="input_audio_buffer.commit"),
    "baseline": ClientSpec("baseline-ws", lambda work, url: NetnsBaseline(url)),
    "baseline-raw": ClientSpec("baseline-ws-raw", lambda work, url: NetnsBaseline(url, "--no-compression")),
}


# ------------------------------------------------------------------------------------------- one cell

@dataclass
class Figures:
    at_server_ms: list[float] = field(default_factory=list)
    first_sound_ms: list[float] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    lost_audio_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)  # press → the speaker monitor's last loud sample
    turns_lost: int = 0
    turns: int = 0
    wire_up_kb: list[float] = field(default_factory=list)  # TCP payload a turn, acked (retransmissions once)
    wire_down_kb: list[float] = field(default_factory=list)
    usage: Usage | None = None


def audible_ms(pcm: np.ndarray, rate_hz: int, loud: int) -> float:
    window = rate_hz // 500  # 2 ms
    n = pcm.size // window
    if not n:
        return 0.0
    peaks = np.abs(pcm[: n * window].astype(np.int32)).reshape(n, window).max(axis=1)
    return float(np.count_nonzero(peaks >= loud // 4) * 2)


def parse_cells(text: str) -> tuple[Cell, ...]:
    """``LOSS[b]:DELAY:JITTER[:RATE]`` cells, comma-separated (e.g. ``5:60:10,3b:30:5,1:30:5:1000``; ``b``:
    bursty loss)."""
    cells = []
    for spec in text.split(","):
        parts = spec.strip().split(":")
        if not 1 <= len(parts) <= 4:
            raise argparse.ArgumentTypeError(f"a cell is LOSS[b]:DELAY:JITTER[:RATE], got {spec!r}")
        model = "bursty" if parts[0].endswith("b") else "random"
        parts[0] = parts[0].rstrip("b")
        loss, delay, jitter = (float(x) for x in (parts + ["0", "0"])[:3])
        cells.append(Cell(loss, delay, jitter, int(parts[3]) if len(parts) == 4 and parts[3] else None, model))
    return tuple(cells)


class Recording:
    """The room's recording from one moment on, taken bit by bit."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        self.parts.append(self.room.take())
        return np.concatenate([t for t, _ in self.parts]), np.concatenate([p for _, p in self.parts])

    def first_sound(self, after_s: float, timeout_s: float) -> float | None:
        """Wait (polling) for the first loud sample later than ``after_s`` (time.time clock)."""
        from turn_latency import first_sound_s

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.01)
            times, pcm = self.take()
            sound_s = first_sound_s(times, pcm, after_s)
            if sound_s is not None:
                return sound_s
        return None


    def sounding(self, timeout_s: float) -> bool:
        """Wait (polling) until the newest 20 ms recorded hold a loud sample: the reply is sounding now."""
        from turn_latency import LOUD

        deadline = time.monotonic() + timeout_s
        while True:
            times, pcm = self.take()
            if times.size and (np.abs(pcm[times > times[-1] - 0.02].astype(np.int32)) > LOUD).any():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)


def ask(client: Any, question: Path, room: Any) -> tuple[float, float]:
    """Speak the question (the button is held), release: (the release on time.time, on time.monotonic)."""
    from kioskd.sim.harness import speak

    speak(question)
    room.take()
    released = time.time(), time.monotonic()
    client.release()
    return released


def run_turns(client: Any, spec: ClientSpec, server: Server, room: Any, question: Path, turns: int,
              verbose: bool) -> Figures:
    from kioskd.sim.harness import Room, wait_for
    from turn_latency import LOUD, first_sound_s, gaps_in_reply, record_until_silent

    fig = Figures(turns=turns, usage=Usage(client.pid))
    assert fig.usage is not None
    fig.usage.start()
    for i in range(1, turns + 1):
        barge = i % BARGE_EVERY == 0
        note = ""
        try:
            wait_for(lambda: client.phase() == "idle", f"{client.name} idle", 20)
            wire0 = wire_bytes()
            client.press()
            released_s, released_mono = ask(client, question, room)
            wait_for(lambda: client.phase() in ("speaking", "idle"), f"{client.name} speaking", 15)
            at_server = server.first_after(spec.at_server_event, released_mono)
            if barge:  # press BARGE_AFTER_S into the reply, hear it stop, then ask again: that reply is scored
                rec = Recording(room)
                sound_s = rec.first_sound(released_s, 10)
                if sound_s is not None:
                    time.sleep(max(0.0, sound_s + BARGE_AFTER_S - time.time()))
                    rec.sounding(1.0)  # in a gap (a stall), wait up to a second for the reply to sound again
                    pressed_s = time.time()
                    client.press()
                    before = rec.take()  # the reply up to now, then the rest until the speaker is quiet
                    times, pcm = record_until_silent(room, pressed_s)
                    times, pcm = np.concatenate([before[0], times]), np.concatenate([before[1], pcm])
                    is_loud = np.abs(pcm.astype(np.int32)) > LOUD
                    loud = times[(times > pressed_s) & is_loud]
                    if times[(times > pressed_s - 0.05) & (times <= pressed_s) & is_loud].size:
                        fig.barge_in_ms.append(max(0.0, (float(loud[-1]) - pressed_s) * 1000) if loud.size else 0.0)
                        note = f", barge-in → silent {fig.barge_in_ms[-1]:.0f} ms"
                    else:  # silent in the 50 ms before the press (a gap, or the reply had ended): not measured
                        note = ", barge-in not measured (the speaker was silent at the press)"
                    wait_for(lambda: client.phase() == "listening", f"{client.name} listening", 10)
                else:  # no sound at all: the turn is lost; press to get back to listening for the next question
                    client.press()
                    note = ", no sound before the barge-in"
                released_s, released_mono = ask(client, question, room)
                wait_for(lambda: client.phase() in ("speaking", "idle"), f"{client.name} speaking", 15)
                at_server = server.first_after(spec.at_server_event, released_mono)
            wait_for(lambda: client.phase() == "idle", f"{client.name} idle after the reply", 20)
        except TimeoutError as exc:
            fig.turns_lost += 1
            if verbose:
                print(f"    {client.name}: turn lost ({exc})", flush=True)
            continue
        times, pcm = record_until_silent(room, released_s)
        wire1 = wire_bytes()
        if not barge:  # a barge-in turn carries two questions and one and a bit replies
            fig.wire_up_kb.append((wire1[0] - wire0[0]) / 1000)
            fig.wire_down_kb.append((wire1[1] - wire0[1]) / 1000)
        sound_s = first_sound_s(times, pcm, released_s)
        if at_server is not None:
            fig.at_server_ms.append((at_server - released_mono) * 1000)
        if sound_s is None:
            fig.turns_lost += 1
            continue
        reply = pcm[times > released_s]
        fig.first_sound_ms.append((sound_s - released_s) * 1000)
        fig.gaps.append(gaps_in_reply(reply, Room.RATE_HZ))
        fig.lost_audio_ms.append(max(0.0, REPLY_MS - audible_ms(reply, Room.RATE_HZ, LOUD)))
        if verbose:
            wire = (f", wire {(wire1[0] - wire0[0]) / 1000:.1f} KB up / {(wire1[1] - wire0[1]) / 1000:.1f} KB down"
                    + (" (two questions)" if barge else ""))
            at_ms = (at_server - released_mono) * 1000 if at_server is not None else float("nan")
            print(f"    {client.name}: at server {at_ms:.0f} ms, "
                  f"sound {fig.first_sound_ms[-1]:.0f} ms, gaps {fig.gaps[-1]}{note}{wire}{client.turn_note()}",
                  flush=True)
            print(f"      sent: {server.sent_before(released_mono)}", flush=True)
    fig.usage.stop()
    return fig


def p50_p95(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}


def mean(values: list[float] | list[int], digits: int) -> float | None:
    return round(float(np.mean(values)), digits) if values else None


def row(transport: str, cell: Cell, fig: Figures) -> dict[str, Any]:
    usage = fig.usage
    return {"transport": transport, "loss_pct": cell.loss_pct, "loss_model": cell.loss_model,
            "delay_ms": cell.delay_ms, "jitter_ms": cell.jitter_ms, "rate_kbit": cell.rate_kbit,
            "question_at_server_ms": p50_p95(fig.at_server_ms),
            "release_to_first_sound_ms": p50_p95(fig.first_sound_ms),
            "gaps_per_reply": mean(fig.gaps, 2), "audio_lost_ms": mean(fig.lost_audio_ms, 1),
            "barge_in_to_silence_ms": p50_p95(fig.barge_in_ms),
            "turns_lost": fig.turns_lost, "turns": fig.turns,
            "cpu_pct": None if usage is None or usage.cpu_pct is None else round(usage.cpu_pct, 1),
            "rss_mb": None if usage is None or usage.rss_mb is None else round(usage.rss_mb, 1),
            "rss_peak_mb": None if usage is None or usage.rss_peak_mb is None else round(usage.rss_peak_mb, 1),
            "wire_kb_per_turn": {"up": mean(fig.wire_up_kb, 1), "down": mean(fig.wire_down_kb, 1)}}


def fmt(p: dict[str, float | None]) -> str:
    return "—" if p["p50"] is None else f"{p['p50']:.0f} / {p['p95']:.0f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    def num(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    head = (f"{'transport':15s} {'loss %':>8s} {'delay ms':>9s} {'kbit/s':>7s} {'at server p50/p95':>18s} "
            f"{'first sound p50/p95':>20s} {'gaps/reply':>10s} {'lost ms':>8s} {'lost turns':>10s} "
            f"{'barge-in→silent':>16s} {'CPU %':>6s} {'RSS MB':>7s} {'wire KB up/down':>16s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        delay = f"{r['delay_ms']:g}±{r['jitter_ms']:g}"
        loss = f"{r['loss_pct']:g}{'b' if r['loss_model'] == 'bursty' else ''}"
        wire = r["wire_kb_per_turn"]
        print(f"{r['transport']:15s} {loss:>8s} {delay:>9s} {str(r['rate_kbit'] or '—'):>7s} "
              f"{fmt(r['question_at_server_ms']):>18s} {fmt(r['release_to_first_sound_ms']):>20s} "
              f"{num(r['gaps_per_reply'], '.2f'):>10s} {num(r['audio_lost_ms'], '.0f'):>8s} "
              f"{r['turns_lost']:>4d} / {r['turns']:<3d} {fmt(r['barge_in_to_silence_ms']):>16s} "
              f"{num(r['cpu_pct'], '.1f'):>6s} {num(r['rss_mb'], '.0f'):>7s} "
              f"{num(wire['up'], '.0f') + ' / ' + num(wire['down'], '.0f'):>16s}", flush=True)
    print("(loss: a b marks bursty loss)")


def install_deps() -> None:
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "iptables", "libnetfilter-queue-dev", "build-essential"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "NetfilterQueue"], check=True)


def bench(args: argparse.Namespace) -> int:
    from kioskd.core.pcm import tone
    from kioskd.sim.harness import Room, write_wav

    if os.geteuid() != 0:
        print("transport.py needs root (network namespaces, iptables, tc)", file=sys.stderr)
        return 2
    for tool in (IPT, "tc", "ip", "ss"):
        if not shutil.which(tool):
            print(f"missing {tool}: run with --install-deps once (see the docstring)", file=sys.stderr)
            return 2
    names = args.clients.split(",")
    unknown = [name for name in names if name not in CLIENTS]
    if unknown:
        print(f"unknown clients {', '.join(unknown)}: choose from {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    cells = args.cells or (QUICK_CELLS if args.quick else FULL_CELLS)
    turns = args.turns or (4 if args.quick else 20)
    work = Path(tempfile.mkdtemp(prefix="kioskd-transport-"))
    question = write_wav(work / "q.wav", speechlike(tone(300, 400, 48000, 0.4), 1), 48000)
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    rows: list[dict[str, Any]] = []
    room = Room()
    try:
        setup_link()
        if args.tcp_cc:
            set_tcp_cc(args.tcp_cc)
        print(f"transport benchmark: {len(cells)} cells × {turns} turns a client (every {BARGE_EVERY}th "
              f"interrupted {BARGE_AFTER_S:g} s into its reply, then asked again); kioskd at {rev}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; simulator in netns {NS_SERVER} at "
              f"{IP_SERVER}, first delta 200 ms after response.create, {REPLY_MS} ms tone replies at 4× real time; "
              f"0.4 s question; noise floor σ {NOISE_LSB:g} LSB on both; TCP congestion control {tcp_cc()}",
              flush=True)
        for cell in cells:
            impairment = Impairment(cell)
            try:
                for name in names:
                    spec = CLIENTS[name]
                    server: Server | None = None
                    client: Any = None
                    started = time.monotonic()
                    try:
                        cwork = work / f"{name}-{len(rows)}"
                        cwork.mkdir()
                        try:
                            server = Server(spec.simulator)
                            client = spec.start(cwork, server.url)
                        except (TimeoutError, RuntimeError) as exc:
                            print(f"  {cell.title()}: {name} did not start: {exc}", flush=True)
                            fig = Figures(turns_lost=turns, turns=turns)
                        else:
                            room.take()
                            fig = run_turns(client, spec, server, room, question, turns, args.verbose)
                    finally:
                        if client is not None:
                            client.stop()
                        if server is not None:
                            server.close()
                    rows.append(row(spec.transport, cell, fig))
                    print(f"  {cell.title()}: {name} done in {time.monotonic() - started:.0f} s", flush=True)
            finally:
                drops = impairment.close()
                if drops:
                    print(f"  {cell.title()}: the delayers dropped {drops}", flush=True)
    finally:
        room.close()
        teardown()
        print()
        print_table(rows)  # what was measured, even when a failure cut the run short
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
            print(f"\nwrote {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="helper")
    d = sub.add_parser("delay", help="(internal) the NFQUEUE delayer, run inside a namespace")
    d.add_argument("--delay-ms", type=float, required=True)
    d.add_argument("--jitter-ms", type=float, default=0.0)
    d.add_argument("--burst-loss-pct", type=float, default=0.0, help="Gilbert-Elliott loss, average %%")
    d.add_argument("--burst-packets", type=float, default=BURST_PACKETS, help="its mean burst length")
    d.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("serve", help="(internal) the simulator, run inside the server namespace")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--reply-ms", type=int, default=REPLY_MS)
    s.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket")
    parser.add_argument("--quick", action="store_true", help="5 cells × 4 turns a client")
    parser.add_argument("--turns", type=int, default=0, help="turns a cell a client (default 4 quick, 20 full)")
    parser.add_argument("--clients", default="kioskd,baseline",
                        help=f"comma-separated, of {', '.join(CLIENTS)} (default kioskd,baseline)")
    parser.add_argument("--cells", type=parse_cells, metavar="L[b]:D:J[:R],...",
                        help="only these cells: loss %% (b: bursty), one-way delay ms, jitter ms, tbf kbit/s "
                             "(e.g. 5:60:10,3b:30:5)")
    parser.add_argument("--tcp-cc", metavar="NAME", help="TCP congestion control in both namespaces (e.g. reno; "
                        "only what the host allows; default: the host's)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--install-deps", action="store_true", help="apt + pip install what the impairment needs")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftover namespaces and exit")
    args = parser.parse_args()
    if args.helper == "delay":
        return run_delayer(args.delay_ms, args.jitter_ms, args.burst_loss_pct, args.burst_packets, args.seed)
    if args.helper == "serve":
        return run_server(args.host, args.port, args.reply_ms, args.transport)
    if args.cleanup:
        teardown()
        return 0
    if args.install_deps:
        install_deps()
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
