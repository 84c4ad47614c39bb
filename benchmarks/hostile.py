"""A hostile server against a real `kioskd run`: what each attack costs in journal lines and memory.

Each scenario starts a fresh `kioskd run` (null sinks, JSON log at the default level, info) on a hostile Realtime
endpoint (`kioskd/sim/hostile.py`), lets it reach idle, runs the attack on the first session (later sessions
are configured normally), waits until kioskd has been quiet for a second, and prints: the log lines written
from the attack on (for a flood, until the count of lines held back has been said, a minute on), their bytes,
the longest line, the events they were, what `kioskctl status` counted, kioskd's RSS before and after (and its
peak, VmHWM), and the public phase at the end. Nothing is asserted. Run it after ./scripts/setup:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/hostile.py [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess
from kioskd.sim.hostile import Attack, HostileServer, Peer, deflated_frame, error_event

MB = 10**6


async def error_flood(peer: Peer) -> None:
    """5,000 `error` events, each with a 10 KB message, as fast as the socket takes them."""
    await peer.configure()
    if peer.number == 1:
        for i in range(5000):
            await peer.send(error_event("server_error", f"{i} " + "x" * 10_000, None, "server_error"))


async def bad_flood(peer: Peer) -> None:
    """20,000 malformed events, each with a different text in its bad field."""
    await peer.configure()
    if peer.number == 1:
        for i in range(20_000):
            await peer.send({"type": "conversation.item.truncated", "event_id": "e", "item_id": "i",
                             "content_index": 0, "audio_end_ms": f"soon-{i}"})


async def big_mismatch(peer: Peer) -> None:
    """`session.updated` reporting a 2 MB turn_detection object."""
    await peer.configure({"type": "server_vad", "junk": "y" * 2 * MB} if peer.number == 1 else None)


async def mismatch_200k(peer: Peer) -> None:
    """`session.updated` reporting a 200 KB turn_detection object (a frame under kioskd's cap)."""
    await peer.configure({"type": "server_vad", "junk": "y" * 200_000} if peer.number == 1 else None)


async def binary_frames(peer: Peer) -> None:
    """1,000 binary frames, each carrying a JSON event."""
    await peer.configure()
    if peer.number == 1:
        for _ in range(1000):
            await peer.send_raw(json.dumps({"type": "rate_limits.updated", "event_id": "e", "rate_limits": []}).encode())


def _huge_delta(base64_chars: int) -> str:
    audio = base64.b64encode(bytes(base64_chars // 4 * 3)).decode()
    return json.dumps({"type": "response.output_audio.delta", "event_id": "e", "response_id": "resp_x",
                       "item_id": "item_x", "output_index": 0, "content_index": 0, "delta": audio})


async def huge_deltas(peer: Peer) -> None:
    """Twelve 15 MB audio deltas on the first two sessions."""
    await peer.configure()
    if peer.number <= 2:
        frame = _huge_delta(15 * MB)
        for _ in range(12):
            await peer.send_raw(frame)


async def long_deltas(peer: Peer) -> None:
    """1,000 audio deltas of 3 s each (192 KB frames, under kioskd's frame cap)."""
    await peer.configure()
    if peer.number == 1:
        frame = _huge_delta(192_000)  # base64 of 3 s of PCM
        for _ in range(1000):
            await peer.send_raw(frame)


async def deflate_bomb(peer: Peer) -> None:
    """3,000 compressed frames written at once, each 269 bytes on the wire and a 200 KB delta inflated (a frame
    under kioskd's cap): valid only if kioskd agreed to permessage-deflate."""
    await peer.configure()
    if peer.number == 1:
        peer.ws.transport.write(deflated_frame(_huge_delta(200_000)) * 3000)


async def fatal_code_naming_an_event(peer: Peer) -> None:
    """One `error` with code unknown_parameter naming a client event (not the session's configuration)."""
    await peer.configure()
    if peer.number == 1:
        await peer.send(error_event("unknown_parameter", "Unknown parameter: 'item.foo'.", "evt_7"))


SCENARIOS: dict[str, Attack] = {
    "error_flood": error_flood, "bad_flood": bad_flood, "big_mismatch": big_mismatch, "mismatch_200k": mismatch_200k,
    "binary_frames": binary_frames, "huge_deltas": huge_deltas, "long_deltas": long_deltas, "deflate_bomb": deflate_bomb,
    "fatal_code_naming_an_event": fatal_code_naming_an_event,
}


#: attacks whose lines kioskd holds back over their rate (the benchmark waits for the count to be said)
FLOODS = frozenset({"error_flood", "bad_flood", "binary_frames", "long_deltas"})


class ServerThread:
    """The hostile server on its own loop in a thread."""

    def __init__(self, attack: Attack) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = HostileServer(attack)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def run(name: str, attack: Attack, settle_s: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"kioskd-hostile-{name}-"))
    thread = ServerThread(attack)
    started = [False]

    async def gated(peer: Peer) -> None:
        if peer.number == 1:
            while not started[0]:
                await asyncio.sleep(0.05)
        await attack(peer)

    thread.server.attack = gated
    kiosk = KioskdProcess(work, f"realtime:\n  url: {thread.server.url}\n{NULL_SINK_AUDIO}log:\n  format: json\n")
    try:
        # the first session is held at session.created until the attack starts: wait for kioskd to be up
        while not any(line.get("event") == "ws.session_created" for line in kiosk.lines):
            time.sleep(0.05)
        time.sleep(1.0)
        pid = kiosk.proc.pid
        rss0 = status_kib(pid, "VmRSS")
        first = len(kiosk.lines)
        started[0] = True
        t0 = time.monotonic()
        quiet_since, count = time.monotonic(), len(kiosk.lines)
        while time.monotonic() - quiet_since < settle_s and time.monotonic() - t0 < 120:
            time.sleep(0.1)
            if len(kiosk.lines) != count:
                quiet_since, count = time.monotonic(), len(kiosk.lines)
        if name in FLOODS:  # the count of lines held back is said a minute after the first held back
            deadline = time.monotonic() + 75
            while "log.suppressed" not in kiosk.ctl("status")["events"] and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(0.5)
        lines = kiosk.lines[first:]
        phase = kiosk.phase()
        counted = kiosk.ctl("status")["events"]
        rss1, hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
        return {
            "scenario": name, "lines": len(lines), "bytes": sum(int(line["_bytes"]) for line in lines),
            "longest": max((int(line["_bytes"]) for line in lines), default=0),
            "events": dict(Counter(f"{line.get('event')}:{line.get('level')}" for line in lines).most_common(8)),
            "rss_mib": f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} (peak {hwm / 1024:.1f})",
            "counted": {k: v for k, v in counted.items() if k.startswith(("ws.", "log."))},
            "connections": thread.server.connections, "phase": phase,
            "not_json": [str(line["text"])[:160] for line in lines if line.get("event") == "raw"],
        }
    finally:
        kiosk.stop()
        thread.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--settle-s", type=float, default=2.0, help="quiet time that ends a scenario")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for name in args.scenarios or SCENARIOS:
        print(json.dumps(run(name, SCENARIOS[name], args.settle_s)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
