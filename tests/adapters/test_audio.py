"""AudioIO on real PortAudio streams through the PulseAudio null sinks (scripts/audio-env).

What kioskd plays is recorded from the sink's monitor by a separate InputStream, started first and confirmed
delivering (an idle null sink renders ahead, so a late recorder can miss seconds: reference/pi-audio.md §8).
Delivery through the pulse plugin is bursty: these tests wait for content, never assert timing or underruns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from kioskd.adapters.audio import AudioIO, Mic
from kioskd.adapters.resample import PlaybackResampler
from kioskd.adapters.devices import DeviceChoice, Kind, find_device
from kioskd.config import AudioConfig
from kioskd.core.pcm import API_RATE_HZ, Pcm, ms_to_samples, tone
from tests.conftest import LogRecorder, run, wait_until


def sd() -> Any:
    import sounddevice  # type: ignore[import-untyped]

    return sounddevice


class Recorder:
    """Keeps every block an InputStream on ``device`` delivers (appended on PortAudio's thread)."""

    def __init__(self, device: str, rate_hz: int, channels: int = 1) -> None:
        self.rate_hz = rate_hz
        self.channels = channels
        self.blocks: list[npt.NDArray[np.int16]] = []
        self.overflowed = False  # frames were lost: the recording is then only a lower bound
        self.stream = sd().InputStream(device=device, samplerate=rate_hz, channels=channels, dtype="int16",
                                       blocksize=rate_hz // 100, latency=0.01, callback=self._callback)

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.blocks.append(indata.copy())
        if status.input_overflow:
            self.overflowed = True

    def frames(self) -> int:
        return sum(b.shape[0] for b in list(self.blocks))

    def data(self) -> npt.NDArray[np.int16]:
        blocks = list(self.blocks)
        return np.concatenate(blocks) if blocks else np.zeros((0, self.channels), dtype=np.int16)

    def close(self) -> None:
        self.stream.abort()
        self.stream.close()




async def started_recorder(device: str, rate_hz: int, channels: int = 1) -> Recorder:
    rec = Recorder(device, rate_hz, channels)
    rec.stream.start()
    await wait_until(lambda: rec.frames() > rate_hz // 10, f"{device} to deliver")
    return rec


def spectrum_peak(x: npt.NDArray[Any], rate_hz: int) -> tuple[float, float]:
    """(frequency of the strongest bin, its magnitude over the median magnitude)."""
    x = x.astype(np.float64)
    mag = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    mag[:3] = 0  # DC
    peak = int(np.argmax(mag))
    return peak * rate_hz / x.size, float(mag[peak] / (np.median(mag) + 1e-9))


def loud_ms(x: npt.NDArray[Any], rate_hz: int, level: int = 2000) -> float:
    """Milliseconds of samples above ``level`` (a sine at 0.3 full scale is above 2000 about 80% of the time)."""
    return float(np.count_nonzero(np.abs(x.astype(np.int32)) > level)) * 1000 / rate_hz


def sounding_span_ms(x: npt.NDArray[Any], rate_hz: int) -> float:
    """First to last non-zero sample, in ms (an idle null sink's monitor is exact zeros)."""
    idx = np.flatnonzero(x)
    return 0.0 if idx.size == 0 else (int(idx[-1]) - int(idx[0]) + 1) * 1000 / rate_hz


@contextlib.contextmanager
def speaking(pcm: Pcm, *, repeat: bool = False) -> Iterator[None]:
    """A visitor talking: ``pcm`` (48 kHz mono) played into the microphone's sink (kiosk_question), once or over
    and over, for the duration of the block."""
    pos = [0]

    def play(outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        start = pos[0] % pcm.size if repeat else pos[0]
        chunk = pcm[start:start + frames]
        outdata[:chunk.size, 0] = chunk
        outdata[chunk.size:] = 0
        pos[0] += frames

    player = sd().OutputStream(device="kiosk_question", samplerate=48000, channels=1, dtype="int16", blocksize=480,
                               callback=play)
    player.start()
    try:
        yield
    finally:
        player.abort()
        player.close()


def new_audio(**kwargs: Any) -> tuple[AudioIO, list[Pcm], list[int], LogRecorder]:
    """An AudioIO on the null sinks; ``drained`` gets each drain's ``dropped_ms``."""
    mic: list[Pcm] = []
    drained: list[int] = []
    lines = LogRecorder()
    options: dict[str, Any] = {"input_device": "kiosk_microphone", "output_device": "kiosk_speaker", **kwargs}
    audio = AudioIO(on_mic=mic.append, on_drained=drained.append, log=lines, **options)
    return audio, mic, drained, lines


# --------------------------------------------------------------------------------------- speaker


def test_reply_tone_comes_out_of_the_speaker() -> None:
    """A 1 kHz tone at 24 kHz is heard at the 48 kHz sink; drained fires; one log line per device."""
    async def main() -> None:
        rec = await started_recorder("kiosk_speaker_monitor", 48000)
        audio, _, drained, lines = new_audio()
        try:
            await audio.start()
            audio.play(tone(1000, 1000), "item_1")
            audio.end_of_reply()
            await wait_until(lambda: bool(drained), "the reply to drain")
            await wait_until(lambda: loud_ms(rec.data(), 48000) > 700, "the tone at the monitor")
        finally:
            await audio.close()
            rec.close()
        freq_hz, prominence = spectrum_peak(rec.data()[:, 0], 48000)
        assert abs(freq_hz - 1000) < 5
        assert prominence > 1000
        opened = {f["direction"]: f for event, f in lines.lines if event == "audio.device_opened"}
        assert opened["output"]["name"] == "kiosk_speaker" and opened["input"]["name"] == "kiosk_microphone"
        assert opened["output"]["rate_hz"] == 48000 and opened["output"]["blocksize"] == 48 * AudioConfig().block_ms
        assert {"channels", "latency_s"} <= set(opened["output"])
        stats = audio.stats()
        assert stats["output_rate_hz"] == 48000 and stats["drained"] == 1 and stats["callback_errors"] == 0
        assert audio.last_callback_s > 0 and audio.output_latency_s > 0

    run(main())


def test_full_scale_noise_reaches_the_speaker_limited_to_the_ceiling() -> None:
    """A hostile server's full-scale noise as reply audio: at the speaker's monitor it peaks at the limiter's
    ceiling (-1 dBFS), not at 32 768 — resampling's own overshoot included, because the limiter comes after it."""
    from kioskd.core.limiter import PeakLimiter

    noise = np.random.default_rng(3).integers(-32768, 32768, API_RATE_HZ).astype(np.int16)

    async def main() -> None:
        rec = await started_recorder("kiosk_speaker_monitor", 48000)
        audio, _, drained, _ = new_audio()
        try:
            await audio.start()
            for chunk in np.array_split(noise, 10):
                audio.play(chunk, "item_1")
            audio.end_of_reply()
            await wait_until(lambda: bool(drained), "the noise to drain")
            await wait_until(lambda: loud_ms(rec.data(), 48000, level=10000) > 300, "the noise at the monitor")
        finally:
            await audio.close()
            rec.close()
        peak = int(np.max(np.abs(rec.data().astype(np.int32))))
        assert PeakLimiter(48000).ceiling - 300 <= peak <= PeakLimiter(48000).ceiling

    run(main())


def test_interrupt_silences_the_speaker_and_reports_what_was_handed() -> None:
    """Interrupt mid-tone: silence follows, played_ms <= pushed, and it matches what the monitor heard."""
    async def main() -> None:
        rec = await started_recorder("kiosk_speaker_monitor", 48000)
        audio, _, _, _ = new_audio()
        try:
            await audio.start()
            audio.play(tone(1000, 3000), "item_1")
            await wait_until(lambda: loud_ms(rec.data(), 48000) > 300, "the tone to start")
            playing = audio.stats()
            item_id, played_ms = audio.interrupt()
            mark = rec.frames()
            await wait_until(lambda: rec.frames() > mark + 48000, "a second of recording after the interrupt")
        finally:
            await audio.close()
            rec.close()
        assert item_id == "item_1"
        assert 0 < played_ms <= 3000
        x = rec.data()[:, 0]
        assert not x[-24000:].any()  # the last half second is silence
        heard_ms = sounding_span_ms(x, 48000)
        # everything handed to PortAudio is heard, fade included (reference/pi-audio.md §8)
        assert heard_ms <= played_ms + 5
        assert rec.overflowed or heard_ms >= played_ms - 10
        # while playing, status shows the handed count minus what the device still queues: never ahead of it
        assert playing["playing_item"] == "item_1" and 0 <= playing["heard_ms"] <= played_ms
        assert {"jitter_ms", "late_ms", "target_ms", "underruns"} <= set(playing)

    run(main())


def test_a_60_s_reply_delivered_at_once_is_queued_whole() -> None:
    """A 60 s reply arriving in 100 ms deltas as fast as they can be pushed (far faster than real time): the
    playout buffer, sized for turn.reply_cap_s (90 s) at the device rate, holds all of it — nothing dropped, no
    audio.overflow — while the speaker starts on it. (The old 30 s ring dropped half of it.) Hearing all 60 s
    takes a minute of real time: benchmarks/long_reply.py records it."""
    async def main() -> None:
        audio, _, _, lines = new_audio()
        try:
            await audio.start()
            for chunk in np.array_split(tone(1000, 60000), 600):
                audio.play(chunk, "item_1")
            audio.end_of_reply()
            queued = audio.stats()
            await wait_until(lambda: int(audio.stats()["items_started"]) == 1, "the reply to start playing")
            item_id, played_ms = audio.interrupt()
        finally:
            await audio.close()
        assert queued["capacity_s"] == 92.0 and audio.reply_cap_s == 90.0
        assert (queued["overflows"], queued["overflow_ms"]) == (0, 0)
        assert queued["depth_ms"] >= 59000  # all of it queued, less what already went to the device
        assert item_id == "item_1" and 0 < played_ms < 59000
        assert not [f for e, f in lines.lines if e == "audio.overflow"]

    run(main())


def test_an_overflow_is_one_warning_per_reply_and_the_drain_says_how_much_was_dropped() -> None:
    """With a ring far shorter than the reply (reply_cap_s 0.5 s: a 2.5 s ring), 4 s pushed at once: the end of
    the reply is dropped, the drain reports it to the daemon (dropped_ms, which the turn's reply_ms leaves out)
    and one audio.overflow warning says how much, however many pushes overflowed."""
    async def main() -> None:
        audio, _, drained, lines = new_audio(reply_cap_s=0.5)
        try:
            await audio.start()
            for chunk in np.array_split(tone(1000, 4000), 40):
                audio.play(chunk, "item_1")
            audio.end_of_reply()
            await wait_until(lambda: bool(drained), "the reply to drain")
            stats = audio.stats()
        finally:
            await audio.close()
        warnings = [f for e, f in lines.lines if e == "audio.overflow"]
        assert len(warnings) == 1 and warnings[0]["end"] == "drained" and warnings[0]["capacity_s"] == 2.5
        assert warnings[0]["pushes"] == stats["overflows"] > 1
        dropped_ms = warnings[0]["dropped_ms"]
        assert drained == [dropped_ms] and abs(dropped_ms - stats["overflow_ms"]) <= 1
        assert 1000 <= dropped_ms <= 1500  # 4 s into 2.5 s, less what played while it was pushed

    run(main())


def test_reopening_the_speaker_at_a_longer_latency_keeps_playing_and_is_no_device_loss() -> None:
    """reopen_output (what the underflow guard does between visits): a new stream at the longer latency, one more
    device_opened line, audio queued before it still comes out, and the old stream's finish is not a lost device."""
    async def main() -> None:
        rec = await started_recorder("kiosk_speaker_monitor", 48000)
        audio, _, _, lines = new_audio(latency_s=0.015)
        try:
            await audio.start()
            before_s = audio.output_latency_s
            audio.play(tone(1000, 1500), "item_1")  # queued across the reopen
            got_s = await audio.reopen_output(0.06)
            audio.end_of_reply()
            await wait_until(lambda: loud_ms(rec.data(), 48000) > 1000, "the tone after the reopen")
            await asyncio.sleep(0.1)  # the old stream's finished_callback has long run
            fault = audio.fault(asyncio.get_running_loop().time())
        finally:
            await audio.close()
            rec.close()
        assert before_s < 0.03 and got_s >= 0.05
        assert audio.stats()["output_latency_s"] == round(got_s, 4)
        assert fault is None
        opened = [f for event, f in lines.lines if event == "audio.device_opened" and f["direction"] == "output"]
        assert [f["latency_s"] for f in opened] == [round(before_s, 4), round(got_s, 4)]

    run(main())


def test_44k_stereo_devices_play_and_hear_the_tone() -> None:
    """Both directions at 44.1 kHz stereo: the output duplicates the tone onto both channels (24 → 44.1 kHz),
    and an input on the same sink's monitor mixes it down and delivers it at 24 kHz."""
    def choose_44k_stereo(query: str | None, kind: Kind) -> DeviceChoice:
        # an injected choice: the pulse PCMs would accept 48 kHz mono, and this test wants the other path
        return DeviceChoice(find_device(query, kind)[0], str(query), 44100, 2)

    async def main() -> None:
        rec = await started_recorder("kiosk_speaker44_monitor", 44100, channels=2)
        audio, mic, drained, _ = new_audio(output_device="kiosk_speaker44", input_device="kiosk_speaker44_monitor",
                                           chooser=choose_44k_stereo)
        try:
            await audio.start()
            await wait_until(lambda: bool(mic), "the microphone to deliver")
            audio.play(tone(1000, 1000), "item_1")
            audio.end_of_reply()
            await wait_until(lambda: bool(drained), "the reply to drain")
            await wait_until(lambda: loud_ms(rec.data()[:, 1], 44100) > 700, "the tone at the monitor")
            await wait_until(lambda: loud_ms(np.concatenate(mic), API_RATE_HZ) > 700, "the tone at on_mic")
        finally:
            await audio.close()
            rec.close()
        stats = audio.stats()
        assert (stats["output_rate_hz"], stats["output_channels"]) == (44100, 2)
        assert (stats["input_rate_hz"], stats["input_channels"]) == (44100, 2)
        x = rec.data()
        for channel in (0, 1):
            freq_hz, prominence = spectrum_peak(x[:, channel], 44100)
            assert abs(freq_hz - 1000) < 5 and prominence > 1000
        freq_hz, prominence = spectrum_peak(np.concatenate(mic), API_RATE_HZ)
        assert abs(freq_hz - 1000) < 5 and prominence > 1000


# --------------------------------------------------------------------------------------- microphone


def test_microphone_delivers_24k_audio_of_the_question() -> None:
    """A 700 Hz tone played into the microphone's sink comes out of on_mic at 24 kHz, peak at 700 Hz."""
    question = tone(700, 1000, rate_hz=48000)

    async def main() -> None:
        audio, mic, _, _ = new_audio()
        try:
            await audio.start()
            await wait_until(lambda: sum(p.size for p in mic) > API_RATE_HZ // 10, "the microphone to deliver")
            with speaking(question):
                await wait_until(lambda: loud_ms(np.concatenate(mic), API_RATE_HZ) > 700, "the question at on_mic")
        finally:
            await audio.close()
        assert all(p.dtype == np.int16 and p.ndim == 1 for p in mic)
        heard = np.concatenate(mic)
        freq_hz, prominence = spectrum_peak(heard, API_RATE_HZ)
        assert abs(freq_hz - 700) < 5 and prominence > 1000
        assert audio.stats()["input_rate_hz"] == 48000

    run(main())


def test_microphone_gate_keeps_the_preroll_and_hands_it_over_first() -> None:
    """PREROLL: nothing reaches on_mic, the newest preroll_ms are kept; LIVE: that pre-roll arrives at once as one
    24 kHz block (the question's 700 Hz), then live blocks follow; OFF keeps nothing, so LIVE then hands over
    nothing."""
    question = tone(700, 5000, rate_hz=48000)

    async def main() -> None:
        audio, mic, _, _ = new_audio(preroll_ms=200)
        try:
            await audio.start()
            await wait_until(lambda: bool(mic), "the microphone to deliver")
            with speaking(question, repeat=True):
                await wait_until(lambda: loud_ms(np.concatenate(mic[-5:]), API_RATE_HZ) > 20, "the tone at on_mic")

                audio.set_mic(Mic.PREROLL)
                await asyncio.sleep(0.01)  # a block posted before the gate closed runs on the next loop pass
                before, calls = len(mic), int(audio.stats()["input_callbacks"])
                await wait_until(lambda: int(audio.stats()["input_callbacks"]) > calls + 20, "400 ms of callbacks")
                assert len(mic) == before, "the microphone reached the loop while the gate kept the pre-roll"

                audio.set_mic(Mic.LIVE)
                assert len(mic) == before + 1, "the pre-roll was not handed over at once"
                preroll = mic[-1]
                assert ms_to_samples(150) <= preroll.size <= ms_to_samples(200)
                freq_hz, prominence = spectrum_peak(preroll, API_RATE_HZ)
                assert abs(freq_hz - 700) < 10 and prominence > 100
                await wait_until(lambda: len(mic) > before + 3, "live blocks after the pre-roll")

                audio.set_mic(Mic.OFF)
                await asyncio.sleep(0.01)
                before, calls = len(mic), int(audio.stats()["input_callbacks"])
                await wait_until(lambda: int(audio.stats()["input_callbacks"]) > calls + 10, "200 ms of callbacks")
                audio.set_mic(Mic.LIVE)
                assert len(mic) == before and audio.stats()["mic"] == "live"
        finally:
            await audio.close()

    run(main())


def test_the_preroll_never_holds_what_the_speaker_played() -> None:
    """No echo path into the next question: while the speaker sounds (an apology earcon in IDLE, say) the pre-roll
    ring is emptied, so opening the gate then hands over nothing even though the visitor was talking; once the
    speaker has been quiet for its echo window the ring fills again and is handed over."""
    question = tone(700, 5000, rate_hz=48000)

    async def main() -> None:
        started: list[float] = []
        audio, mic, _, _ = new_audio(preroll_ms=200, on_started=started.append)
        try:
            await audio.start()
            with speaking(question, repeat=True):
                await wait_until(lambda: bool(mic) and loud_ms(np.concatenate(mic[-5:]), API_RATE_HZ) > 20,
                                 "the visitor's voice at on_mic")
                audio.set_mic(Mic.PREROLL)
                audio.play(tone(1000, 2000), "item_1")  # the speaker sounds while the visitor talks
                audio.end_of_reply()
                # the first sound left the buffer (queued is not sounding: a burst of input callbacks before it
                # would fill the ring with the visitor's voice, rightly, and the check below would see it)
                await wait_until(lambda: bool(started), "the speaker to sound")
                calls = int(audio.stats()["input_callbacks"])
                await wait_until(lambda: int(audio.stats()["input_callbacks"]) > calls + 15, "300 ms of callbacks")
                assert not audio.silent, "the 2 s tone ended too soon for this test"
                before = len(mic)
                audio.set_mic(Mic.LIVE)
                assert len(mic) == before, "the pre-roll held audio taken while the speaker sounded"

                audio.set_mic(Mic.PREROLL)
                await wait_until(lambda: audio.silent, "the speaker and its echo window to end", 20)
                calls = int(audio.stats()["input_callbacks"])
                await wait_until(lambda: int(audio.stats()["input_callbacks"]) > calls + 15, "300 ms of quiet")
                before = len(mic)
                audio.set_mic(Mic.LIVE)
                assert len(mic) == before + 1 and mic[-1].size >= ms_to_samples(150)
        finally:
            await audio.close()

    run(main())


def test_unknown_device_fails_start_with_a_device_error() -> None:
    from kioskd.errors import DeviceError

    async def main() -> None:
        audio, _, _, _ = new_audio(output_device="no such speaker")
        try:
            await audio.start()
        except DeviceError as exc:
            assert exc.direction == "output" and "kiosk_speaker" in str(exc)
        else:
            raise AssertionError("start() accepted an unknown device")
        finally:
            await audio.close()

    run(main())


def test_a_name_matching_two_devices_opens_the_first_and_says_so() -> None:
    """A second identical adapter plugged in makes the configured name match twice: the first device in
    PortAudio's order is opened (not a refusal), and one audio.device_ambiguous warning names both."""
    async def main() -> None:
        audio, _, _, lines = new_audio(output_device="speaker44")
        try:
            await audio.start()
        finally:
            await audio.close()
        [(_, fields)] = [line for line in lines.lines if line[0] == "audio.device_ambiguous"]
        assert fields["direction"] == "output" and fields["query"] == "speaker44"
        assert fields["chosen"] == "kiosk_speaker44" and fields["others"] == ["kiosk_speaker44_monitor"]
        opened = [f for e, f in lines.lines if e == "audio.device_opened" and f["direction"] == "output"]
        assert [f["name"] for f in opened] == ["kiosk_speaker44"]

    run(main())


# --------------------------------------------------------------------------------------- resampling (pure)


def test_playback_resampling_does_not_drift() -> None:
    """60 s of 24 kHz in 20 ms blocks gives 60 s at the device rate: exactly after the flush, and before it
    short only by soxr's fixed lag (under 40 ms at MQ, reference/pi-audio.md §4.2), which does not grow."""
    block = np.zeros(ms_to_samples(20), dtype=np.int16)
    block[::7] = 1000
    for rate_hz in (48000, 44100, 32000, 16000):
        rs = PlaybackResampler(rate_hz)
        lag_samples = []
        total = 0
        for n in range(1, 3001):
            total += sum(pcm.size for pcm, _item in rs.push(block, "item_1"))
            if n % 1500 == 0:
                lag_samples.append(n * 20 * rate_hz // 1000 - total)
        one_block = rate_hz // 50
        assert all(0 <= lag < 2 * one_block for lag in lag_samples), (rate_hz, lag_samples)
        assert abs(lag_samples[0] - lag_samples[1]) <= one_block, (rate_hz, lag_samples)
        total += sum(pcm.size for pcm, _item in rs.flush())
        assert abs(total - 60 * rate_hz) <= 1, rate_hz


def test_playback_resampler_credits_each_item_its_own_samples() -> None:
    """A new item flushes the previous item's tail first: 1 s of each item gives 1 s at 48 kHz for each."""
    rs = PlaybackResampler(48000)
    counts: dict[str | None, int] = {}
    pieces = []
    for item in ("a", None, "b"):
        for chunk in np.array_split(tone(500, 1000), 37):
            pieces += rs.push(chunk, item)
    pieces += rs.flush()
    for pcm, item in pieces:
        counts[item] = counts.get(item, 0) + pcm.size
    assert {k: round(v / 48) for k, v in counts.items()} == {"a": 1000, None: 1000, "b": 1000}
    rs.push(tone(500, 100), "c")
    rs.clear()  # barge-in: what soxr held is dropped, never attributed
    assert rs.flush() == []


def test_only_underflows_while_playing_count_as_heard() -> None:
    """The output callback, driven directly as PortAudio would: an underflow flagged while the speaker was idle is
    counted but not heard; one flagged right after a block of reply audio is heard."""
    from types import SimpleNamespace

    from kioskd.core.jitter import PlayoutBuffer

    audio, _, _, _ = new_audio()
    audio._buffer = PlayoutBuffer(48000, prebuffer_ms=10, min_ms=10)
    out = np.zeros((240, 1), dtype=np.int16)
    timing = SimpleNamespace(outputBufferDacTime=0.015, currentTime=0.0)
    calm, late = SimpleNamespace(output_underflow=False), SimpleNamespace(output_underflow=True)
    audio._on_output(out, 240, timing, late)  # idle: nothing was playing
    audio._buffer.push(tone(1000, 500, 48000), "item_1", now_s=0.0)
    for _ in range(5):
        audio._on_output(out, 240, timing, calm)
    assert out.any()
    audio._on_output(out, 240, timing, late)
    stats = audio.stats()
    assert (stats["output_underflows"], stats["heard_underflows"]) == (2, 1)
    assert audio.heard_underflows == 1
