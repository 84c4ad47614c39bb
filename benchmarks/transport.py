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
  - a bottleneck: ``tc qdisc add dev VETH root tbf rate R burst 4kb latency 400ms`` on each veth.

Per cell and client (transport column: ``websocket`` for kioskd, ``baseline-ws`` for the naive client; ``webrtc``
later): release → the question complete at the server (``response.create`` received, timed by the simulator on
CLOCK_MONOTONIC, which the namespaces share), release → first sound on the speaker monitor p50/p95, gaps > 10 ms
per reply, reply audio not heard (the tone's length less what was audible, mean per reply), turns lost (no sound
within the timeout, or the client never left waiting).

Setup (benchmark only, root): ``apt-get install iptables libnetfilter-queue-dev build-essential`` and
``.venv/bin/pip install NetfilterQueue`` (``--install-deps`` does both). Then, with no test run on the sinks:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/transport.py --quick [--json out.json]

``--quick``: 4 cells × 4 turns a client (a couple of minutes); the full run: every cell of issue 14, 20 turns.
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
import subprocess
import sys
import tempfile
import threading
import time
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
#: a noise floor (σ in int16 LSB, about -68 dBFS) on the question and the reply tones. A pure tone is far more
#: compressible than speech: under permessage-deflate (the naive client's websockets default; kioskd offers no
#: compression) a tone's base64 frames shrink to 2 % of their size, espeak-ng speech's to 60 %. With σ = 12 the
#: tones shrink like speech (60 %), so neither client gets a wire advantage that real audio would not give it;
#: the floor is far below the loudness thresholds the recording is judged by.
NOISE_LSB: Final = 12.0


@dataclass(frozen=True)
class Cell:
    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbit: int | None = None

    def title(self) -> str:
        parts = [f"loss {self.loss_pct:g} %", f"delay {self.delay_ms:g}±{self.jitter_ms:g} ms each way"]
        if self.rate_kbit:
            parts.append(f"tbf {self.rate_kbit} kbit/s")
        return ", ".join(parts)


QUICK_CELLS: Final = (Cell(), Cell(3, 30, 5), Cell(5, 60, 10), Cell(1, 30, 5, 1000))
FULL_CELLS: Final = tuple(Cell(loss, delay, delay / 6) for delay in (0, 30, 60) for loss in (0, 1, 3, 5)) + (
    Cell(0, 30, 5, 1000), Cell(3, 30, 5, 1000))


def speechlike(pcm: np.ndarray, seed: int) -> np.ndarray:
    """``pcm`` with the NOISE_LSB noise floor (seeded): as compressible on the wire as speech."""
    noise = np.random.default_rng(seed).normal(0.0, NOISE_LSB, pcm.size)
    return np.clip(pcm.astype(np.float64) + noise, -32768, 32767).astype(np.int16)


def wire_bytes() -> tuple[int, int]:
    """(acked bytes sent, bytes received) over the kiosk namespace's TCP connections to the simulator."""
    out = in_ns(NS_KIOSK, "ss", "-tinH", "dst", IP_SERVER, check=False).stdout
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


class Impairment:
    """One cell's impairment on both veth ends; ``close`` undoes it (the delayers stop, the rules go)."""

    def __init__(self, cell: Cell) -> None:
        self.delayers: list[subprocess.Popen[str]] = []
        self.ends = ((NS_KIOSK, VETH_KIOSK), (NS_SERVER, VETH_SERVER))
        for ns, dev in self.ends:
            in_ns(ns, IPT, "-F", "OUTPUT")
            in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            if cell.loss_pct:
                in_ns(ns, IPT, "-A", "OUTPUT", "-o", dev, "-m", "statistic", "--mode", "random",
                      "--probability", f"{cell.loss_pct / 100:.4f}", "-j", "DROP")
            if cell.delay_ms or cell.jitter_ms:
                proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, "delay",
                                         "--delay-ms", str(cell.delay_ms), "--jitter-ms", str(cell.jitter_ms)],
                                        stdout=subprocess.PIPE, text=True)
                self.delayers.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "bound":
                    raise RuntimeError("the NFQUEUE delayer did not start (NetfilterQueue installed? see --help)")
                in_ns(ns, IPT, "-A", "OUTPUT", "-o", dev, "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM))
            if cell.rate_kbit:
                in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{cell.rate_kbit}kbit",
                      "burst", "4kb", "latency", "400ms")

    def close(self) -> None:
        for ns, dev in self.ends:
            in_ns(ns, IPT, "-F", "OUTPUT", check=False)
            in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        for proc in self.delayers:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------------------------------------- the helpers run
# inside a namespace: `delay` (the NFQUEUE delayer) and `serve` (the simulator)

def run_delayer(delay_ms: float, jitter_ms: float) -> int:
    from netfilterqueue import NetfilterQueue  # type: ignore[import-not-found]

    rng = random.Random(7)
    held: list[tuple[float, int, Any]] = []
    cond = threading.Condition()
    last_due = [0.0]
    seq = [0]

    def on_packet(pkt: Any) -> None:
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
    try:
        nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()
    return 0


def run_server(host: str, port: int, reply_ms: int) -> int:
    """The Realtime simulator on ``host``; prints ``create T`` (time.monotonic()) for each response.create."""
    from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

    async def main() -> None:
        sim = RealtimeSimulator(SimOptions(voice="tone", tone_hz=1000, reply_ms=reply_ms, delta_ms=100,
                                           first_delta_delay_ms=200.0))
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
                    if kind == "input_audio_buffer.commit":
                        print(f"commit {t:.6f}", flush=True)
                    elif kind == "response.create":
                        print(f"create {t:.6f}", flush=True)
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


class Server:
    """`serve` in the server namespace, its ``create`` times collected."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_SERVER, sys.executable, __file__, "serve",
                                      "--host", IP_SERVER, "--port", str(PORT), "--reply-ms", str(REPLY_MS)],
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = line.split()[1]
        self.times: dict[str, list[float]] = {"create": [], "commit": []}
        self.sent: list[tuple[float, str]] = []  # (the create's time, what the client sent before it)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind in self.times:
                self.times[kind].append(float(rest))
            elif kind == "sent" and self.times["create"]:
                self.sent.append((self.times["create"][-1], rest))

    def first_after(self, kind: str, t: float) -> float | None:
        """The first ``kind`` event (create: response.create, commit: input_audio_buffer.commit) received at or
        after ``t`` (time.monotonic(), shared by the namespaces)."""
        later = [c for c in self.times[kind] if c >= t]
        return later[0] if later else None

    def sent_before(self, create: float) -> str:
        return next((text for t, text in self.sent if t == create), "")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------------- the clients,
# started in the kiosk namespace

class NetnsKioskd:
    name = "kioskd"
    transport = "websocket"

    def __init__(self, work: Path, url: str, input_format: str = "pcm16") -> None:
        from kioskd.adapters.control import request
        from kioskd.sim.harness import NULL_SINK_AUDIO

        if input_format != "pcm16":  # the question as 8 kHz G.711 (audio.input_format): a lighter uplink
            self.transport = f"websocket-{input_format}"
        self._request = request
        self.socket = str(work / "control.sock")
        config = work / "kioskd.yaml"
        config.write_text(f"control:\n  socket: {self.socket}\nrealtime:\n  url: {url}\n  allow_plaintext: true\n"
                          f"{NULL_SINK_AUDIO}  earcons: false\n  input_format: {input_format}\n"
                          "log:\n  format: json\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1", STATE_DIRECTORY=str(work / "state"))
        env.pop("OPENAI_API_KEY", None)
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_KIOSK, sys.executable, "-m", "kioskd", "run",
                                      "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
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
    transport = "baseline-ws"

    def __init__(self, url: str) -> None:
        from kioskd.sim.harness import wait_for

        self.proc = subprocess.Popen(["ip", "netns", "exec", NS_KIOSK, sys.executable, str(BASELINE), "--url", url],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
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


# ------------------------------------------------------------------------------------------- one cell

@dataclass
class Figures:
    at_server_ms: list[float] = field(default_factory=list)
    first_sound_ms: list[float] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    lost_audio_ms: list[float] = field(default_factory=list)
    turns_lost: int = 0
    wire_up_kb: list[float] = field(default_factory=list)  # TCP payload a turn, acked (retransmissions once)
    wire_down_kb: list[float] = field(default_factory=list)


def audible_ms(pcm: np.ndarray, rate_hz: int, loud: int) -> float:
    window = rate_hz // 500  # 2 ms
    n = pcm.size // window
    if not n:
        return 0.0
    peaks = np.abs(pcm[: n * window].astype(np.int32)).reshape(n, window).max(axis=1)
    return float(np.count_nonzero(peaks >= loud // 4) * 2)


def parse_cells(text: str) -> tuple[Cell, ...]:
    """``LOSS:DELAY:JITTER[:RATE]`` cells, comma-separated (e.g. ``5:60:10,1:30:5:1000``)."""
    cells = []
    for spec in text.split(","):
        parts = spec.strip().split(":")
        if not 1 <= len(parts) <= 4:
            raise argparse.ArgumentTypeError(f"a cell is LOSS:DELAY:JITTER[:RATE], got {spec!r}")
        loss, delay, jitter = (float(x) for x in (parts + ["0", "0"])[:3])
        cells.append(Cell(loss, delay, jitter, int(parts[3]) if len(parts) == 4 and parts[3] else None))
    return tuple(cells)


def run_turns(client: Any, server: Server, room: Any, question: Path, turns: int, verbose: bool) -> Figures:
    from kioskd.sim.harness import Room, speak, wait_for
    from turn_latency import LOUD, first_sound_s, gaps_in_reply, record_until_silent

    fig = Figures()
    for _ in range(turns):
        try:
            wait_for(lambda: client.phase() == "idle", f"{client.name} idle", 20)
            wire0 = wire_bytes()
            client.press()
            speak(question)
            room.take()
            released_s, released_mono = time.time(), time.monotonic()
            client.release()
            wait_for(lambda: client.phase() in ("speaking", "idle"), f"{client.name} speaking", 15)
            wait_for(lambda: client.phase() == "idle", f"{client.name} idle after the reply", 20)
        except TimeoutError as exc:
            fig.turns_lost += 1
            if verbose:
                print(f"    {client.name}: turn lost ({exc})", flush=True)
            continue
        times, pcm = record_until_silent(room, released_s)
        wire1 = wire_bytes()
        fig.wire_up_kb.append((wire1[0] - wire0[0]) / 1000)
        fig.wire_down_kb.append((wire1[1] - wire0[1]) / 1000)
        sound_s = first_sound_s(times, pcm, released_s)
        create = server.first_after("create", released_mono)
        if create is not None:
            fig.at_server_ms.append((create - released_mono) * 1000)
        if sound_s is None:
            fig.turns_lost += 1
            continue
        reply = pcm[times > released_s]
        fig.first_sound_ms.append((sound_s - released_s) * 1000)
        fig.gaps.append(gaps_in_reply(reply, Room.RATE_HZ))
        fig.lost_audio_ms.append(max(0.0, REPLY_MS - audible_ms(reply, Room.RATE_HZ, LOUD)))
        if verbose:
            print(f"    {client.name}: at server {fig.at_server_ms[-1] if create else float('nan'):.0f} ms, "
                  f"sound {fig.first_sound_ms[-1]:.0f} ms, gaps {fig.gaps[-1]}, wire {fig.wire_up_kb[-1]:.1f} KB up / {fig.wire_down_kb[-1]:.1f} KB down"
                  f"{client.turn_note()}", flush=True)
            if create is not None:
                time.sleep(0.05)
                print(f"      sent: {server.sent_before(create)}", flush=True)
    return fig


def p50_p95(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1)}


def row(transport: str, cell: Cell, fig: Figures) -> dict[str, Any]:
    return {"transport": transport, "loss_pct": cell.loss_pct, "delay_ms": cell.delay_ms,
            "jitter_ms": cell.jitter_ms, "rate_kbit": cell.rate_kbit,
            "question_at_server_ms": p50_p95(fig.at_server_ms),
            "release_to_first_sound_ms": p50_p95(fig.first_sound_ms),
            "gaps_per_reply": round(float(np.mean(fig.gaps)), 2) if fig.gaps else None,
            "audio_lost_ms": round(float(np.mean(fig.lost_audio_ms)), 1) if fig.lost_audio_ms else None,
            "turns_lost": fig.turns_lost, "turns": len(fig.first_sound_ms) + fig.turns_lost}


def fmt(p: dict[str, float | None]) -> str:
    return "—" if p["p50"] is None else f"{p['p50']:.0f} / {p['p95']:.0f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'transport':12s} {'loss %':>6s} {'delay ms':>9s} {'kbit/s':>7s} {'at server p50/p95':>18s} "
            f"{'first sound p50/p95':>20s} {'gaps/reply':>10s} {'lost ms':>8s} {'lost turns':>10s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        gaps = "—" if r["gaps_per_reply"] is None else f"{r['gaps_per_reply']:.2f}"
        lost = "—" if r["audio_lost_ms"] is None else f"{r['audio_lost_ms']:.0f}"
        delay = f"{r['delay_ms']:g}±{r['jitter_ms']:g}"
        print(f"{r['transport']:12s} {r['loss_pct']:>6g} {delay:>9s} {str(r['rate_kbit'] or '—'):>7s} "
              f"{fmt(r['question_at_server_ms']):>18s} {fmt(r['release_to_first_sound_ms']):>20s} {gaps:>10s} "
              f"{lost:>8s} {r['turns_lost']:>4d} / {r['turns']:<3d}", flush=True)


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
    for tool in (IPT, "tc", "ip"):
        if not shutil.which(tool):
            print(f"missing {tool}: run with --install-deps once (see the docstring)", file=sys.stderr)
            return 2
    cells = args.cells or (QUICK_CELLS if args.quick else FULL_CELLS)
    turns = args.turns or (4 if args.quick else 20)
    work = Path(tempfile.mkdtemp(prefix="kioskd-transport-"))
    question = write_wav(work / "q.wav", speechlike(tone(300, 400, 48000, 0.4), 1), 48000)
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                         cwd=Path(__file__).parent).stdout.strip()
    print(f"transport benchmark: {len(cells)} cells × {turns} turns a client; kioskd at {rev}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; simulator in netns {NS_SERVER} at {IP_SERVER}, "
          f"first delta 200 ms after response.create, {REPLY_MS} ms tone replies at 4× real time; "
          f"0.4 s question", flush=True)
    rows: list[dict[str, Any]] = []
    room = Room()
    try:
        setup_link()
        for cell in cells:
            impairment = Impairment(cell)
            try:
                for name in args.clients.split(","):
                    server = Server()
                    client: Any = None
                    started = time.monotonic()
                    try:
                        cwork = work / f"{name}-{len(rows)}"
                        cwork.mkdir()
                        try:
                            client = (NetnsKioskd(cwork, server.url) if name == "kioskd" else
                                      NetnsKioskd(cwork, server.url, "pcmu") if name == "kioskd-pcmu" else
                                      NetnsBaseline(server.url))
                        except (TimeoutError, RuntimeError) as exc:
                            print(f"  {cell.title()}: {name} did not start: {exc}", flush=True)
                            fig = Figures(turns_lost=turns)
                        else:
                            room.take()
                            fig = run_turns(client, server, room, question, turns, args.verbose)
                    finally:
                        if client is not None:
                            client.stop()
                        server.close()
                    transport = client.transport if client is not None else name
                    rows.append(row(transport, cell, fig))
                    print(f"  {cell.title()}: {name} done in {time.monotonic() - started:.0f} s", flush=True)
            finally:
                impairment.close()
    finally:
        room.close()
        teardown()
    print()
    print_table(rows)
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
    s = sub.add_parser("serve", help="(internal) the simulator, run inside the server namespace")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--reply-ms", type=int, default=REPLY_MS)
    parser.add_argument("--quick", action="store_true", help="4 cells × 4 turns a client")
    parser.add_argument("--turns", type=int, default=0, help="turns a cell a client (default 4 quick, 20 full)")
    parser.add_argument("--clients", default="kioskd,baseline",
                        help="kioskd, kioskd-pcmu (the question as 8 kHz G.711), baseline (default kioskd,baseline)")
    parser.add_argument("--cells", type=parse_cells, metavar="L:D:J[:R],...",
                        help="only these cells: loss %%, one-way delay ms, jitter ms, tbf kbit/s (e.g. 5:60:10)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--install-deps", action="store_true", help="apt + pip install what the impairment needs")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftover namespaces and exit")
    args = parser.parse_args()
    if args.helper == "delay":
        return run_delayer(args.delay_ms, args.jitter_ms)
    if args.helper == "serve":
        return run_server(args.host, args.port, args.reply_ms)
    if args.cleanup:
        teardown()
        return 0
    if args.install_deps:
        install_deps()
    return bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
