"""A driver for the coupled core (``Kiosk``) on a fake clock, and views of the actions it returns.

Shared by test_turn.py and test_link.py. The driver only calls ``Kiosk.handle``/``begin``/``recover`` and reads
``status()``; the views pick actions apart by type. No Realtime wire type appears here: the core speaks in
intentions (``StartQuestion``, ``Commit``, ``RequestReply``…), and that is what the tests assert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from kioskd.core import events as ev
from kioskd.core.kiosk import Kiosk
from kioskd.core.pcm import Pcm, ms_to_samples
from kioskd.core.settings import LinkSettings, Settings, TurnSettings

LINK = LinkSettings(voice="cedar", instructions="You are the voice of exhibit 12.")
SETTINGS = Settings(link=LINK, turn=TurnSettings(preroll_ms=200))


class Driver:
    """A Kiosk on a fake clock: ``now`` only moves when a test moves it. Every action is also kept in ``log``."""

    def __init__(self, settings: Settings = SETTINGS, draw: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.k = Kiosk(settings, rand=lambda: 0.5, draw=draw)
        self.now = 100.0
        self.log: list[ev.Action] = []
        self._sample = 0

    def _keep(self, out: list[ev.Action]) -> list[ev.Action]:
        assert isinstance(out, list)
        self.log += out
        return out

    def begin(self) -> list[ev.Action]:
        return self._keep(self.k.begin(self.now))

    def feed(self, inp: ev.Input, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self._keep(self.k.handle(inp, self.now))

    def recover(self, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self._keep(self.k.recover(self.now, RuntimeError("boom")))

    def status(self) -> dict[str, Any]:
        return self.k.status()

    @property
    def phase(self) -> str:
        return str(self.status()["phase"])

    def done_lines(self) -> list[dict[str, Any]]:
        """The fields of every ``turn.done`` line so far."""
        return [n.fields for n in notes(self.log, "turn.done")]

    # --- inputs with realistic payloads

    def block(self, ms: float) -> ev.MicBlock:
        """A mic block whose samples are a running counter, so appends can be checked sample by sample."""
        n = ms_to_samples(ms)
        pcm = (np.arange(self._sample, self._sample + n) % 30000).astype(np.int16)
        self._sample += n
        return ev.MicBlock(pcm)

    def mic(self, ms: float, block_ms: float = 20) -> tuple[list[ev.Action], Pcm]:
        """Feed ``ms`` of mic audio in blocks (the clock advances with the audio); return actions and the audio."""
        out: list[ev.Action] = []
        audio: list[Pcm] = []
        left = ms
        while left > 1e-9:
            step = min(block_ms, left)
            blk = self.block(step)
            audio.append(blk.pcm)
            out += self.feed(blk, after_s=step / 1000)
            left -= step
        return out, np.concatenate(audio) if audio else np.zeros(0, np.int16)

    def press(self, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self.feed(ev.Pressed(self.now))

    def release(self, after_s: float = 0.0) -> list[ev.Action]:
        self.now += after_s
        return self.feed(ev.Released(self.now))


def delta(response_id: str, item_id: str, ms: float) -> ev.AudioDelta:
    return ev.AudioDelta(response_id, item_id, np.full(ms_to_samples(ms), 7, np.int16))


def done(response_id: str, status: str = "completed", usage: dict[str, Any] | None = None) -> ev.ResponseDone:
    return ev.ResponseDone(response_id, status, "client_cancelled" if status == "cancelled" else None, usage)


def usage_of(total: int) -> dict[str, Any]:
    """A response.done usage object, nested as the service sends it."""
    return {"total_tokens": total, "input_tokens": total // 2, "output_tokens": total - total // 2,
            "input_token_details": {"audio_tokens": total // 2, "cached_tokens": 0}}


def then_played(d: Driver, out: list[ev.Action], played_ms: int, item: str = "item_1") -> list[ev.Action]:
    """``out``, plus what the core answers to the ``Played(item, played_ms)`` the executor feeds right after an
    ``Interrupt`` in it (before any other input)."""
    if ev.Interrupt() not in out:
        return out
    return out + d.feed(ev.Played(item, played_ms))


# ------------------------------------------------------------------------------------------------ action views


def said(actions: Iterable[ev.Action]) -> list[ev.Intent]:
    """The intentions (what is to be said to the model), in order."""
    return [a for a in actions if isinstance(a, ev.INTENTS)]


def said_kinds(actions: Iterable[ev.Action]) -> list[str]:
    return [type(a).__name__ for a in said(actions)]


def kinds(actions: Iterable[ev.Action], *, publish: bool = False) -> list[str]:
    """Action class names, with log lines and disarms left out (and the phase's SetMic/Publish unless asked)."""
    skip: tuple[type, ...] = (ev.Note, ev.Disarm) if publish else (ev.Note, ev.Disarm, ev.SetMic, ev.Publish)
    return [type(a).__name__ for a in actions if not isinstance(a, skip)]


def notes(actions: Iterable[ev.Action], name: str) -> list[ev.Note]:
    return [a for a in actions if isinstance(a, ev.Note) and a.name == name]


def note(actions: Iterable[ev.Action], name: str) -> ev.Note:
    """The one note called ``name``."""
    (found,) = notes(actions, name)
    return found


def note_names(actions: Iterable[ev.Action]) -> list[str]:
    return [a.name for a in actions if isinstance(a, ev.Note)]


def leds(actions: Iterable[ev.Action]) -> list[ev.Led]:
    return [a.pattern for a in actions if isinstance(a, ev.SetLed)]


def mics(actions: Iterable[ev.Action]) -> list[ev.Mic]:
    return [a.mode for a in actions if isinstance(a, ev.SetMic)]


def arms(actions: Iterable[ev.Action]) -> dict[ev.Timer, float]:
    return {a.timer: a.at_s for a in actions if isinstance(a, ev.Arm)}


def plays(actions: Iterable[ev.Action]) -> list[ev.Play]:
    return [a for a in actions if isinstance(a, ev.Play)]


def earcons(actions: Iterable[ev.Action]) -> list[ev.Earcon]:
    return [a.earcon for a in actions if isinstance(a, ev.PlayEarcon)]


def appended(actions: Iterable[ev.Action]) -> list[Pcm]:
    return [a.pcm for a in actions if isinstance(a, ev.AppendAudio)]


# ------------------------------------------------------------------------------------------------ scenarios


def online(settings: Settings = SETTINGS, expires_in_s: float | None = None,
           draw: Callable[[], float] | None = None) -> Driver:
    """CONNECTING → IDLE: begin, session created, session updated with no turn detection."""
    d = Driver(settings, draw)
    d.begin()
    d.feed(ev.SessionCreated("sess_1", 2e9 if expires_in_s else None, expires_in_s), after_s=0.1)
    d.feed(ev.SessionUpdated(turn_detection=None), after_s=0.1)
    assert d.phase == "idle"
    return d


def ask(d: Driver, held_ms: float = 300) -> list[ev.Action]:
    """IDLE → WAITING: press, hold with mic audio, release."""
    out = d.press(after_s=1.0)
    out += d.mic(held_ms)[0]
    out += d.release()
    assert d.phase == "waiting"
    return out


def speaking(d: Driver, rid: str = "resp_1", item: str = "item_1", ms: float = 1200) -> list[ev.Action]:
    """WAITING → SPEAKING: the response is created, then ``ms`` of reply audio arrives in 200 ms deltas."""
    out = d.feed(ev.ResponseCreated(rid), after_s=0.1)
    left = ms
    while left > 0:
        out += d.feed(delta(rid, item, min(200, left)), after_s=0.01)
        left -= 200
    assert d.phase == "speaking"
    return out


def reconnect(d: Driver, after_s: float = 0.0) -> None:
    """OFFLINE / FAULT → IDLE: the armed reconnect fires and the new session is configured."""
    d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=after_s)
    d.feed(ev.SessionCreated("sess_n", None))
    d.feed(ev.SessionUpdated(None))
    assert d.phase == "idle"
