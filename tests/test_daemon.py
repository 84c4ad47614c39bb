"""End to end on real parts: kioskd started as systemd starts it (`kioskd run --config`), the simulator on a
real loopback WebSocket, PortAudio on PulseAudio null sinks, the simulated button on gpiozero MockFactory pins
driven through the control socket with kioskctl's own client.

What is asserted is content, never timing: the question reached the model, the reply came out of the speaker,
barge-in silenced it, and the truncate's audio_end_ms stayed within what was delivered.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kioskd.core.pcm import tone
from kioskd.supervisor import AUDIO_STALE_S
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, Room, SimThread, speak, wait_for, write_wav
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
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


@pytest.fixture(params=["websocket", pytest.param("webrtc", marks=pytest.mark.skipif(
    importlib.util.find_spec("aiortc") is None, reason="the webrtc extra is not installed"))])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sim(transport: str) -> Iterator[RealtimeSimulator]:
    thread = SimThread(SimOptions(voice="tone", tone_hz=REPLY_HZ, reply_ms=6000, first_delta_delay_ms=100,
                                  speedup=2.0), transport=transport)
    try:
        yield thread.sim
    finally:
        thread.close()


@pytest.fixture
def room() -> Iterator[Room]:
    recorder = Room(timeout_s=10 * UNIT_S)
    try:
        yield recorder
    finally:
        recorder.close()


def listen(room: Room, seconds: float) -> np.ndarray:
    room.take()
    wait_for(lambda: room.samples() > seconds * Room.RATE_HZ, "the room recording", 10 * UNIT_S)
    return room.take()[1]


def test_visit_question_reply_and_barge_in(tmp_path: Path, sim: RealtimeSimulator, room: Room,
                                           transport: str) -> None:
    """A whole visit, over each transport: the question reaches the model, the reply comes out of the speaker, a
    press silences it, the truncate reports no more than was delivered, and the next question is answered in
    full."""
    question = write_wav(tmp_path / "q.wav", tone(QUESTION_HZ, 1000, 48000, 0.4), 48000)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {sim.url}\n  transport: {transport}\n"
                                    f"{NULL_SINK_AUDIO}"
                                    "  earcons: false\nlog:\n  format: json\n  level: debug\n")
    try:
        kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)

        kiosk.ctl("press")
        speak(question)
        kiosk.ctl("release")
        wait_for(lambda: len(sim.committed_audio) == 1, "the commit", 10 * UNIT_S)
        assert dominant_hz(sim.committed_audio[0], 24000) == pytest.approx(QUESTION_HZ, abs=10)
        kiosk.wait_phase("speaking", timeout_s=10 * UNIT_S)
        assert band_level(listen(room, 1.0), Room.RATE_HZ, REPLY_HZ) > 1000, "no reply came out of the speaker"

        kiosk.ctl("press")  # barge-in while the exhibit speaks
        kiosk.wait_phase("listening", timeout_s=10 * UNIT_S)
        wait_for(lambda: len(sim.truncations) == 1, "the truncate", 10 * UNIT_S)
        item_id, audio_end_ms = sim.truncations[0]
        assert 0 < audio_end_ms <= sim.sent_audio_ms[item_id]
        listen(room, 0.5)  # the fade and the device queue
        assert band_level(listen(room, 1.0), Room.RATE_HZ, REPLY_HZ) < 100, "the speaker kept playing after barge-in"

        speak(question)
        kiosk.ctl("release")
        wait_for(lambda: len(sim.committed_audio) == 2, "the second commit", 10 * UNIT_S)
        kiosk.wait_phase("speaking", timeout_s=10 * UNIT_S)
        kiosk.wait_phase("idle", timeout_s=30 * UNIT_S)
        wait_for(lambda: len(kiosk.events("turn.done")) == 2, "both turns' summaries", 10 * UNIT_S)
        interrupted, done = kiosk.events("turn.done")  # every turn logs one line, however it ended
        assert interrupted["outcome"] == "interrupted" and interrupted["usage"]["total_tokens"] > 0
        assert done["outcome"] == "answered" and done["reply_ms"] >= 5900
        playout = done["playout"]  # what a technician reads about the buffer and the speaker per turn
        assert {"target_ms", "depth_ms", "jitter_ms", "late_pushes", "late_ms", "heard_underflows"} <= set(playout)
        assert 0 < playout["output_latency_s"] < 0.2 and playout["depth_ms"] == 0

        status = kiosk.ctl("status")
        assert status["events"]["turn.barge_in"] == 1
        assert status["turns"] == {"interrupted": 1, "answered": 1}
        assert status["usage"]["total_tokens"] == interrupted["usage"]["total_tokens"] + done["usage"]["total_tokens"]
    finally:
        code = kiosk.stop()
    assert code == 0, kiosk.tail()
    assert not kiosk.events("turn.bug")


def test_words_spoken_as_the_button_goes_down_are_sent_first(tmp_path: Path) -> None:
    """The pre-roll end to end: a visitor starts talking (500 Hz) just before the press, goes on (300 Hz) while
    holding; the committed question opens with the 500 Hz part, and the rest is the held question."""
    early_hz = 500.0
    thread = SimThread(SimOptions(voice="tone", tone_hz=REPLY_HZ, reply_ms=300, first_delta_delay_ms=50))
    sim = thread.sim
    early = write_wav(tmp_path / "early.wav", tone(early_hz, 400, 48000, 0.4), 48000)
    question = write_wav(tmp_path / "q.wav", tone(QUESTION_HZ, 600, 48000, 0.4), 48000)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {sim.url}\n"
                                    f"{NULL_SINK_AUDIO}"
                                    "  earcons: false\n  preroll_ms: 200\nlog:\n  format: json\n")
    try:
        kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
        speak(early)
        kiosk.ctl("press")
        speak(question)
        kiosk.ctl("release")
        wait_for(lambda: len(sim.committed_audio) == 1, "the commit", 10 * UNIT_S)
        committed = sim.committed_audio[0]
        opening, held = committed[:4800], committed[4800:]  # the 200 ms pre-roll, then the held audio
        assert band_level(opening, 24000, early_hz) > 1000, "the words before the press were clipped"
        assert dominant_hz(held, 24000) == pytest.approx(QUESTION_HZ, abs=10)
        # the question's own edges leak a little into the 500 Hz band; a repeated pre-roll would be ~60 % of it
        assert band_level(held[2400:], 24000, early_hz) < band_level(opening, 24000, early_hz) / 20, \
            "the pre-roll was sent more than once"
    finally:
        code = kiosk.stop()
        thread.close()
    assert code == 0, kiosk.tail()


def test_bad_server_frames_and_taps_do_not_stop_the_kiosk(tmp_path: Path) -> None:
    """Malformed JSON, bad base64, an unknown event and a server error each get one log line, and the reply
    still plays; a tap shorter than 100 ms commits nothing. Every event each side sent is schema-valid."""
    from tests.realtime_schema import validate_client, validate_server

    thread = SimThread(SimOptions(voice="tone", tone_hz=REPLY_HZ, reply_ms=800, first_delta_delay_ms=50,
                                  faults=("bad_frames",)))
    sim = thread.sim
    question = write_wav(tmp_path / "q.wav", tone(QUESTION_HZ, 500, 48000, 0.4), 48000)
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {sim.url}\n"
                                    f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n")
    try:
        kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
        kiosk.ctl("press")
        kiosk.ctl("release")
        wait_for(lambda: bool(kiosk.events("turn.done")), "the too-short turn's line", 10 * UNIT_S)
        assert kiosk.events("turn.done")[0]["outcome"] == "too_short"
        assert kiosk.phase() == "idle"

        for turn in (1, 2):
            kiosk.ctl("press")
            speak(question)
            kiosk.ctl("release")
            kiosk.wait_phase("speaking", timeout_s=10 * UNIT_S)
            kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
            wait_for(lambda: len(kiosk.events("turn.done")) == turn + 1, "the turn summary", 5 * UNIT_S)
        assert len(sim.committed_audio) == 2
        assert len(sim.fault_frames) == 6  # three broken frames per reply
        status = kiosk.ctl("status")["events"]
        assert (status["ws.bad_event"], status["ws.unknown_event"], status["ws.server_error"]) == (4, 2, 2)
        bad = [e for e in kiosk.events("ws.bad_event") if e["level"] == "warning"]
        assert sorted(e["type"] for e in bad) == ["(unparsed)", "response.output_audio.delta"]
        assert [e["code"] for e in kiosk.events("ws.server_error")] == ["server_error", "server_error"]
        for event in sim.client_events:
            validate_client(event)
        for event in sim.server_events:
            validate_server(event)
    finally:
        code = kiosk.stop()
        thread.close()
    assert code == 0, kiosk.tail()


def test_systemd_readiness_and_the_key_stays_secret(tmp_path: Path) -> None:
    """As systemd runs it: READY=1 once connected and the audio is open, STATUS= on every phase change,
    STOPPING=1 and exit 0 on SIGTERM; the API key (from a 0600 file) authenticates but never appears in a log
    line or in `kioskctl status`."""
    import os
    import socket

    key = "fake-test-" + "k3y" * 12
    key_file = tmp_path / "openai_api_key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20 * UNIT_S)
    thread = SimThread(SimOptions(api_key=key, voice="tone", reply_ms=500, first_delta_delay_ms=50))
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {thread.sim.url}\n  api_key_file: {key_file}\n"
                                    f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n  level: debug\n",
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        first = notify.recv(4096).decode()
        assert first == "STATUS=connecting"  # not ready while the session is being configured
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready and "STATUS=idle" in ready
        assert kiosk.phase() == "idle"
        assert thread.sim.request_headers[-1]["authorization"] == f"Bearer {key}"
        status = kiosk.ctl("status")
        code = kiosk.stop()
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                break
            if any("STOPPING=1" in m for m in messages):
                break
    finally:
        kiosk.stop()
        thread.close()
        notify.close()
    assert code == 0
    assert any("STOPPING=1" in m for m in messages)
    assert key not in repr(status)
    assert kiosk.lines and not [line for line in kiosk.lines if key in repr(line)]
    assert os.stat(key_file).st_mode & 0o077 == 0


def test_a_wrong_key_is_a_fault_said_once(tmp_path: Path) -> None:
    """A rejected key (HTTP 401) puts kioskd in FAULT with the error LED pattern and one ERROR line naming the
    endpoint; a press then gets the offline prompt, and the key is in no line."""
    key = "fake-wrong-" + "x" * 30
    key_file = tmp_path / "key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    thread = SimThread(SimOptions(api_key="the-right-key"))
    kiosk = KioskdProcess(tmp_path, f"realtime:\n  url: {thread.sim.url}\n  api_key_file: {key_file}\n"
                                    f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n")
    try:
        kiosk.wait_phase("fault", timeout_s=20 * UNIT_S)
        assert kiosk.ctl("status")["led"] == "error"
        kiosk.ctl("press")
        wait_for(lambda: bool(kiosk.events("turn.rejected")), "the rejected press", 10 * UNIT_S)
        kiosk.ctl("release")
        faults = kiosk.events("ws.fault")
        assert len(faults) == 1 and faults[0]["level"] == "error"
        assert "401" in faults[0]["error"] and "127.0.0.1" in faults[0]["error"]
    finally:
        code = kiosk.stop()
        thread.close()
    assert code == 0
    assert not [line for line in kiosk.lines if key in repr(line)]


def test_losing_the_sound_server_is_said_once_and_exits_for_a_restart(tmp_path: Path) -> None:
    """The audio path dies under kioskd (its own PulseAudio server is killed, as a USB unplug ends an ALSA
    stream): one audio.device_lost line naming the devices, then a non-zero exit so systemd restarts it."""
    import os
    import signal
    import subprocess

    audio_dir = tmp_path / "audio"
    out = subprocess.run(["scripts/audio-env"], capture_output=True, text=True, check=True,
                         env={**os.environ, "KIOSKD_AUDIO_DIR": str(audio_dir)}).stdout
    env = dict(line.removeprefix("export ").replace("'", "").split("=", 1) for line in out.splitlines())
    server_pid = int(subprocess.run(["pgrep", "-f", f"log-target=file:{audio_dir}/"], capture_output=True,
                                    text=True, check=True).stdout.split()[0])
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n", env=env)
    try:
        kiosk.wait_ready(timeout_s=20 * UNIT_S)
        os.kill(server_pid, signal.SIGKILL)
        code = kiosk.proc.wait(timeout=20 * UNIT_S)
    finally:
        kiosk.stop()
    assert code == 1, kiosk.tail()
    lost = kiosk.events("audio.device_lost")
    assert len(lost) == 1 and lost[0]["level"] == "error"
    assert "kiosk_speaker" in lost[0]["output_device"] and lost[0]["cause"]


def test_reload_keeps_the_old_config_on_error_and_applies_a_good_one(tmp_path: Path) -> None:
    """systemctl reload (SIGHUP): a broken file is refused with file, line and key, an oversize one by its size,
    and kioskd keeps serving; a good one is applied (read and parsed off the event loop:
    benchmarks/reload_stall.py). A longer reply cap applies at once but says it needs a restart: the speaker's
    playout buffer was sized for the old one at start."""
    import signal

    thread = SimThread(SimOptions(voice="tone", reply_ms=500))
    base = (f"realtime:\n  url: {thread.sim.url}\n"
            f"{NULL_SINK_AUDIO}log:\n  format: json\n")
    kiosk = KioskdProcess(tmp_path, base)
    config = tmp_path / "kioskd.yaml"
    try:
        kiosk.wait_ready(timeout_s=20 * UNIT_S)
        good = config.read_text()
        config.write_text(good + "turn:\n  reply_wait_s: -3\n")
        kiosk.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(kiosk.events("config.reload_failed")), "the refused reload", 10 * UNIT_S)
        failed = kiosk.events("config.reload_failed")[0]
        assert "kioskd.yaml:" in failed["error"] and "turn.reply_wait_s" in failed["error"]
        assert kiosk.phase() == "idle"
        config.write_text(good + "# " + "x" * 300_000 + "\n")  # over the size limit: refused unread
        kiosk.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(kiosk.events("config.reload_failed")) == 2, "the refused big file", 10 * UNIT_S)
        assert "the limit is 262,144" in kiosk.events("config.reload_failed")[1]["error"]
        assert kiosk.phase() == "idle"
        bad_knowledge = tmp_path / "knowledge.yaml"
        bad_knowledge.write_text("- topic: Age\n  txt: Made around 320 AD.\n")
        config.write_text(good + "exhibit:\n  knowledge_file: knowledge.yaml\n")  # a curator's typo
        kiosk.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(kiosk.events("config.reload_failed")) == 3, "the refused knowledge", 10 * UNIT_S)
        assert f"{bad_knowledge}:2: [1]: unknown key 'txt'" in kiosk.events("config.reload_failed")[2]["error"]
        assert kiosk.phase() == "idle"
        config.write_text(good + "turn:\n  reply_wait_s: 12\n  reply_cap_s: 120\n")
        kiosk.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(kiosk.events("config.reloaded")), "the applied reload", 10 * UNIT_S)
        assert kiosk.events("config.reloaded")[0]["needs_restart"] == ["turn.reply_cap_s"]
        assert kiosk.phase() == "idle"
    finally:
        code = kiosk.stop()
        thread.close()
    assert code == 0, kiosk.tail()


def test_watchdog_pings_while_healthy(tmp_path: Path) -> None:
    """With WATCHDOG_USEC set (as systemd's WatchdogSec= does), healthy kioskd sends WATCHDOG=1 regularly."""
    import socket

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10 * UNIT_S)
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n",
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    try:
        pings = 0
        while pings < 3:
            if "WATCHDOG=1" in notify.recv(4096).decode():
                pings += 1
    finally:
        code = kiosk.stop()
        notify.close()
    assert code == 0
    assert not kiosk.events("systemd.watchdog_withheld")


def test_a_stalled_process_is_said_once_and_neither_killed_nor_taken_for_a_lost_device(tmp_path: Path) -> None:
    """The whole process stands still for 2 s (SIGSTOP, as an overloaded Pi or a debugger would) and runs again:
    one daemon.loop_stalled warning; the watchdog goes on pinging (WATCHDOG_USEC 6 s: a ping every 3 s, and the
    stall spans a ping's tick), so a kiosk that recovered is not killed; the audio callbacks, stale only because
    nothing ran, are not taken for a lost device, whichever of the two periodic tasks wakes first. How late the
    ping around the stall comes, against the deadline, is measured by benchmarks/watchdog_stall.py."""
    import os
    import signal
    import socket
    import threading
    import time

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10 * UNIT_S)
    deadline_s = 6.0
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n",
                          env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                               "WATCHDOG_USEC": str(int(deadline_s * 1e6))})
    pings: list[str] = []
    stop = False

    def receive() -> None:
        while not stop:
            try:
                datagram = notify.recv(4096).decode()
            except OSError:
                continue
            if "WATCHDOG=1" in datagram:
                pings.append(datagram)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    try:
        kiosk.wait_phase("idle", timeout_s=20 * UNIT_S)
        wait_for(lambda: len(pings) >= 1, "the first watchdog ping", 10 * UNIT_S)
        seen = len(pings)
        wait_for(lambda: len(pings) > seen, "a fresh ping", 10 * UNIT_S)
        time.sleep(deadline_s / 2 - 0.3)  # stall across the watchdog's next tick: the hard case
        os.kill(kiosk.proc.pid, signal.SIGSTOP)
        time.sleep(2.0)
        before_resume = len(pings)
        os.kill(kiosk.proc.pid, signal.SIGCONT)
        wait_for(lambda: bool(kiosk.events("daemon.loop_stalled")), "the stall to be said", 10 * UNIT_S)
        try:
            wait_for(lambda: len(pings) >= before_resume + 2, "two pings after the stall", 20 * UNIT_S)
        except TimeoutError:
            pass  # asserted below, with the count
        time.sleep(AUDIO_STALE_S)  # past the grace the health check gives the callbacks after a stall
        assert kiosk.phase() == "idle"
    finally:
        stop = True
        code = kiosk.stop()
        notify.close()
    assert code == 0, kiosk.tail()
    (stalled,) = kiosk.events("daemon.loop_stalled")
    assert stalled["level"] == "warning" and stalled["stalled_s"] >= 1.5
    after_stall = len(pings) - before_resume
    assert after_stall >= 2, f"{after_stall} watchdog ping(s) after the stall: the watchdog stopped pinging"
    assert not kiosk.events("systemd.watchdog_withheld") and not kiosk.events("audio.device_lost")


def test_a_dropped_ready_is_sent_again(tmp_path: Path) -> None:
    """systemd's notify socket is full when kioskd becomes ready (its READY=1 datagram is dropped: the send never
    blocks); once the socket drains, READY=1 arrives anyway, without waiting for a visitor."""
    import socket

    path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as filler:
        while True:  # fill the queue (net.unix.max_dgram_qlen) before kioskd starts
            try:
                filler.sendto(b"X=1", path)
            except BlockingIOError:
                break
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}"
                                    "log:\n  format: json\n", env={"NOTIFY_SOCKET": path})
    try:
        kiosk.wait_ready(timeout_s=20 * UNIT_S)
        wait_for(lambda: bool(kiosk.events("daemon.ready")), "kioskd to be serving", 10 * UNIT_S)
        notify.settimeout(0)
        received: list[str] = []
        try:
            while True:
                received.append(notify.recv(4096).decode())
        except BlockingIOError:
            pass
        assert not any("READY=1" in d for d in received), "the socket was not full: this test proves nothing"
        notify.settimeout(10 * UNIT_S)
        while "READY=1" not in notify.recv(4096).decode():
            pass
    finally:
        code = kiosk.stop()
        notify.close()
    assert code == 0, kiosk.tail()
