"""End to end on real parts: kioskd started as systemd starts it (`kioskd run --config`), the simulator on a
real loopback WebSocket, PortAudio on PulseAudio null sinks, the simulated button on gpiozero MockFactory pins
driven through the control socket by `kioskctl`'s own client code.

What is asserted is content, never timing: the question reached the model, the reply came out of the speaker,
barge-in silenced it, and the truncate's audio_end_ms stayed within what was delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import UNIT_S

QUESTION_HZ = 300.0
REPLY_HZ = 1000.0


def dominant_hz(pcm: np.ndarray, rate_hz: int) -> float:
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate_hz)[int(np.argmax(spectrum[1:])) + 1])


def band_level(pcm: np.ndarray, rate_hz: int, hz: float) -> float:
    """RMS of the signal within ±30 Hz of ``hz`` (int16 units)."""
    x = pcm.astype(np.float64)
    if x.size == 0:
        return 0.0
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / rate_hz)
    band = spectrum * ((freqs > hz - 30) & (freqs < hz + 30))
    return float(np.sqrt(np.mean(np.fft.irfft(band, x.size) ** 2)))


class SimThread:
    """The Realtime simulator on its own event loop in a thread, so the test can wait synchronously."""

    def __init__(self, **options: Any) -> None:
        from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions

        self.loop = asyncio.new_event_loop()
        self.sim = RealtimeSimulator(SimOptions(**options))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Recorder:
    """Records a null sink's monitor (the room) with a real PortAudio input stream."""

    RATE_HZ = 48000

    def __init__(self, device: str) -> None:
        import sounddevice as sd

        self.blocks: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.stream = sd.InputStream(device=device, channels=1, samplerate=self.RATE_HZ, dtype="int16",
                                     latency=0.01, callback=self._callback)
        self.stream.start()
        wait_for(lambda: self.samples() > self.RATE_HZ // 10, "the speaker monitor to deliver audio")

    def _callback(self, indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        with self.lock:
            self.blocks.append(indata[:, 0].copy())

    def samples(self) -> int:
        with self.lock:
            return sum(b.size for b in self.blocks)

    def take(self) -> np.ndarray:
        with self.lock:
            out = np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.int16)
            self.blocks = []
        return out

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def wait_for(cond: Any, what: str, units: float = 10) -> None:
    deadline = time.monotonic() + units * UNIT_S
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def question_wav(path: Path, seconds: float = 1.0) -> Path:
    t = np.arange(int(48000 * seconds)) / 48000
    pcm = (0.4 * 32767 * np.sin(2 * np.pi * QUESTION_HZ * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())
    return path


class Kioskd:
    """`kioskd run --config FILE` as a child process, as systemd would start it."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.socket = str(tmp / "control.sock")
        config = tmp / "kioskd.yaml"
        config.write_text(
            f"realtime:\n  url: {url}\n"
            "audio:\n  input_device: kiosk_microphone\n  output_device: kiosk_speaker\n  earcons: false\n"
            f"control:\n  socket: {self.socket}\n"
            "log:\n  format: json\n  level: debug\n"
        )
        self.lines: list[dict[str, Any]] = []
        env = dict(os.environ)
        env.pop("OPENAI_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "kioskd", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "raw", "text": raw})

    def ctl(self, cmd: str) -> dict[str, Any]:
        from kioskd.adapters.control import request

        return request(self.socket, cmd)

    def phase(self) -> str:
        try:
            return str(self.ctl("status")["phase"])
        except Exception:
            assert self.proc.poll() is None, f"kioskd exited: {self.lines[-10:]}"
            return "unreachable"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15 * UNIT_S)


@pytest.fixture
def sim() -> Iterator[Any]:
    thread = SimThread(voice="tone", tone_hz=REPLY_HZ, reply_ms=6000, first_delta_delay_ms=100, speedup=2.0)
    try:
        yield thread.sim
    finally:
        thread.close()


@pytest.fixture
def room() -> Iterator[Recorder]:
    recorder = Recorder("kiosk_speaker_monitor")
    try:
        yield recorder
    finally:
        recorder.close()


def ask(path: Path) -> None:
    subprocess.run(["paplay", "--device=kiosk_mic", str(path)], check=True)


def test_visit_question_reply_and_barge_in(tmp_path: Path, sim: Any, room: Recorder) -> None:
    """A whole visit: the question reaches the model, the reply comes out of the speaker, a press silences it,
    and the truncate reports no more than was delivered."""
    question = question_wav(tmp_path / "q.wav")
    kiosk = Kioskd(tmp_path, sim.url)
    try:
        wait_for(lambda: kiosk.phase() == "idle", "kioskd to be serving", units=20)

        # turn 1: ask, release, hear the beginning of the reply
        kiosk.ctl("press")
        ask(question)
        kiosk.ctl("release")
        wait_for(lambda: len(sim.committed_audio) == 1, "the commit")
        assert dominant_hz(sim.committed_audio[0], 24000) == pytest.approx(QUESTION_HZ, abs=10)
        wait_for(lambda: kiosk.phase() == "speaking", "the reply to start")
        room.take()
        wait_for(lambda: room.samples() > Recorder.RATE_HZ, "a second of the room")
        heard = room.take()
        assert band_level(heard, Recorder.RATE_HZ, REPLY_HZ) > 1000, "the reply tone did not come out of the speaker"

        # barge-in: the visitor presses while the exhibit speaks
        kiosk.ctl("press")
        wait_for(lambda: kiosk.phase() == "listening", "barge-in to start listening")
        wait_for(lambda: len(sim.truncations) == 1, "the truncate")
        item_id, audio_end_ms = sim.truncations[0]
        assert 0 < audio_end_ms <= sim.sent_audio_ms[item_id]
        time.sleep(0.5 * UNIT_S)  # the fade and the device queue
        room.take()
        wait_for(lambda: room.samples() > Recorder.RATE_HZ, "a second of the room after barge-in")
        after = room.take()
        assert band_level(after, Recorder.RATE_HZ, REPLY_HZ) < 100, "the speaker kept playing after barge-in"

        ask(question)
        kiosk.ctl("release")
        wait_for(lambda: len(sim.committed_audio) == 2, "the second commit")
        wait_for(lambda: kiosk.phase() == "idle", "the second reply to be heard in full", units=30)
        done = kiosk.events("turn.done")
        assert len(done) == 1 and done[0]["reply_ms"] >= 5900

        status = kiosk.ctl("status")
        assert status["counters"]["barge_ins"] == 1
        assert status["counters"]["turns_done"] == 1
    finally:
        code = kiosk.stop()
    assert code == 0, kiosk.lines[-10:]
    assert not kiosk.events("turn.bug")
