"""The simulated museum floor, shared by the demo, the end-to-end tests and the benchmarks.

- ``SimThread``: the Realtime simulator (or, given ``ChatSimOptions``, the Chat Completions one) on its own event
  loop in a thread, so a synchronous caller can drive a visit and still read the simulator's records.
- ``Room``: records the speaker null sink's monitor with a real PortAudio stream, with each sample's time.
- ``KioskdProcess``: ``kioskd run --config FILE`` as a child process (as systemd starts it), its JSON log lines
  collected, driven through the control socket with kioskctl's own client.
- ``speak``: a visitor's question played into the microphone's null sink.

Blocking by design: these run in tests, scripts and benchmarks, never inside the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kioskd.adapters.control import request
from kioskd.core.pcm import Pcm
from kioskd.sim.chat_server import ChatSimOptions, ChatSimulator
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

T = TypeVar("T")


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


class SimThread:
    """A simulator on its own loop in a daemon thread (on ``port``; 0: any free one): the Realtime one (over
    ``transport``), or the Chat Completions one when given ``ChatSimOptions``."""

    def __init__(self, options: SimOptions | ChatSimOptions, port: int = 0, transport: str = "websocket") -> None:
        self.loop = asyncio.new_event_loop()
        self.sim: Any
        if isinstance(options, ChatSimOptions):
            self.sim = ChatSimulator(options)
        elif transport == "webrtc":
            from kioskd.sim.webrtc_server import RtcSimulator

            self.sim = RtcSimulator(options)
        else:
            self.sim = RealtimeSimulator(options)
        self._thread = threading.Thread(target=self.loop.run_forever, name="simulator", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(port=port), self.loop).result(10)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the simulator's loop (to read its records while it runs)."""
        async def run() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Room:
    """What the visitor hears: the speaker sink's monitor, recorded with each block's capture time.

    Times are on ``time.time()``'s clock (PortAudio's stream clock on Linux). Start it before playing anything:
    an idle null sink renders ahead, so a freshly attached recorder may get nothing for up to ~2 s.
    """

    RATE_HZ = 48000

    def __init__(self, device: str = "kiosk_speaker_monitor", timeout_s: float = 10.0) -> None:
        import sounddevice as sd  # type: ignore[import-untyped]

        self._blocks: list[tuple[float, Pcm]] = []
        self._lock = threading.Lock()
        self._stream = sd.InputStream(device=device, channels=1, samplerate=self.RATE_HZ, dtype="int16",
                                      latency=0.01, callback=self._callback)
        self._stream.start()
        wait_for(lambda: self.samples() > self.RATE_HZ // 10, "the speaker monitor to deliver audio", timeout_s)

    def _callback(self, indata: Any, frames: int, t: Any, status: Any) -> None:
        with self._lock:
            self._blocks.append((float(t.inputBufferAdcTime), indata[:, 0].copy()))

    def samples(self) -> int:
        with self._lock:
            return sum(b.size for _, b in self._blocks)

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """Everything recorded since the last take: (times_s, samples)."""
        with self._lock:
            blocks, self._blocks = self._blocks, []
        if not blocks:
            return np.zeros(0), np.zeros(0, np.int16)
        times = np.concatenate([t0 + np.arange(b.size) / self.RATE_HZ for t0, b in blocks])
        return times, np.concatenate([b for _, b in blocks])

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


def write_wav(path: Path, pcm: Pcm, rate_hz: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.asarray(pcm, "<i2").tobytes())
    return path


def say(text: str, path: Path) -> Path:
    """A spoken question as a WAV file: espeak-ng where present, else a voiced tone."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(path), text], check=True)
        return path
    from kioskd.core.pcm import voiced_tone

    return write_wav(path, voiced_tone(180, 1500), 24000)


def speak(path: Path) -> None:
    """Play a question into the microphone's null sink (blocks until played)."""
    subprocess.run(["paplay", "--device=kiosk_mic", str(path)], check=True)


#: the head of a kioskd config's audio section for the null sinks of scripts/audio-env (more audio keys may follow)
NULL_SINK_AUDIO = "audio:\n  input_device: kiosk_microphone\n  output_device: kiosk_speaker\n"


class KioskdProcess:
    """``kioskd run --config FILE`` as a child process, its JSON log lines collected with arrival times (``_t``)
    and their length in bytes as written (``_bytes``)."""

    def __init__(self, workdir: Path, config_yaml: str, env: dict[str, str] | None = None) -> None:
        self.socket = str(workdir / "control.sock")
        config = workdir / "kioskd.yaml"
        config.write_text(f"control:\n  socket: {self.socket}\n" + config_yaml)
        self.lines: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        child_env = dict(os.environ, PYTHONUNBUFFERED="1", STATE_DIRECTORY=str(workdir / "state"))
        child_env.pop("OPENAI_API_KEY", None)
        child_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "kioskd", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env)
        threading.Thread(target=self._read, name="kioskd-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.rstrip()}
            if not isinstance(line, dict):
                line = {"event": "raw", "text": raw.rstrip()}
            line["_t"] = time.monotonic() - self.t0
            line["_bytes"] = len(raw.rstrip("\n").encode())
            self.lines.append(line)

    def ctl(self, cmd: str, timeout_s: float = 5.0) -> dict[str, Any]:
        return request(self.socket, cmd, timeout_s=timeout_s)

    def phase(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kioskd exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return str(self.ctl("status")["phase"])
        except Exception:
            return "unreachable"

    def wait_phase(self, *phases: str, timeout_s: float = 30.0) -> str:
        seen: list[str] = []

        def reached() -> bool:
            seen.append(self.phase())
            return seen[-1] in phases

        try:
            wait_for(reached, f"kioskd phase {'/'.join(phases)}", timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (last phase {seen[-1] if seen else '?'}):\n{self.tail()}") from None
        return seen[-1]

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Idle with the Realtime session up: with a fallback configured (the embedded default has one) the kiosk
        is idle, and answers through it, while the link is still connecting."""
        wait_for(lambda: bool(self.events("ws.ready")), "the Realtime session", timeout_s)
        self.wait_phase("idle", timeout_s=timeout_s)

    def ask(self, question: Path, room: Room | None = None) -> float:
        """A visitor's question: press, speak into the mic, release; waits until the reply starts (or the turn
        ends). Returns the release time on ``time.time()``'s clock; ``room`` is emptied just before it."""
        self.ctl("press")
        speak(question)
        if room is not None:
            room.take()
        released_s = time.time()
        self.ctl("release")
        self.wait_phase("speaking", "idle")
        return released_s

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def tail(self, n: int = 15) -> str:
        return "\n".join(json.dumps({k: v for k, v in line.items() if k not in ("_t", "_bytes")}) for line in self.lines[-n:])

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
