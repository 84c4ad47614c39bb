"""The tables as a whole: a golden walk of (phase, input) → next phase, and the README's copy of the diagram.

The walk drives a real ``Kiosk`` into each public phase with real inputs, feeds it one sample of every input
kind, and records where it went (``bug`` for a LocalProtocolError). The result must equal
``tests/core/golden_table.txt`` line for line, so a changed row fails here. After a deliberate change, rewrite the
golden file with ``KIOSKD_UPDATE_GOLDEN=1 ./scripts/test tests/core/test_table.py`` and review its diff.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.kiosk import Kiosk, diagram
from kioskd.core.settings import LinkSettings, Settings, TurnSettings
from kioskd.errors import AuthError, ConnectionLost, LocalProtocolError

GOLDEN = Path(__file__).with_name("golden_table.txt")
README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS = Settings(LinkSettings(), TurnSettings(preroll_ms=200))


def _pcm(ms: int) -> np.ndarray:
    return np.full(ms * 24, 5, np.int16)


class Walk:
    def __init__(self) -> None:
        self.k = Kiosk(SETTINGS, rand=lambda: 0.5)
        self.now = 100.0
        self.k.begin(self.now)

    def feed(self, *inputs: ev.Input, dt: float = 0.05) -> Walk:
        for inp in inputs:
            self.now += dt
            self.k.handle(inp, self.now)
        return self


def connecting() -> Walk:
    return Walk()


def offline() -> Walk:
    return Walk().feed(ev.Disconnected(ConnectionLost(1006, "gone")))


def fault() -> Walk:
    return Walk().feed(ev.Disconnected(AuthError("wss://example.test/v1/realtime", 401)))


def idle() -> Walk:
    return Walk().feed(ev.SessionCreated("sess_1", None), ev.SessionUpdated(None))


def listening() -> Walk:
    w = idle()
    return w.feed(ev.Pressed(w.now + 1), dt=1.0).feed(*[ev.MicBlock(_pcm(20)) for _ in range(10)], dt=0.02)


def waiting() -> Walk:
    w = listening()
    return w.feed(ev.Released(w.now), ev.ResponseCreated("resp_1"))


def speaking() -> Walk:
    return waiting().feed(ev.AudioDelta("resp_1", "item_1", _pcm(200)))


SCENARIOS: dict[str, Callable[[], Walk]] = {
    "connecting": connecting, "offline": offline, "fault": fault, "idle": idle, "listening": listening,
    "waiting": waiting, "speaking": speaking,
}


def samples(w: Walk) -> dict[str, ev.Input]:
    """One realistic input of every kind (server events name the scenario's response and item)."""
    return {
        "Pressed": ev.Pressed(w.now + 1.0),
        "Released": ev.Released(w.now + 1.0),
        "MicBlock": ev.MicBlock(_pcm(20)),
        "Played": ev.Played("item_1", 100),
        "PlaybackDrained": ev.PlaybackDrained(0),
        "PlaybackStarted": ev.PlaybackStarted(w.now),
        "Reloaded(same)": ev.Reloaded(SETTINGS),
        "Reloaded(new voice)": ev.Reloaded(Settings(LinkSettings(voice="cedar"), SETTINGS.turn)),
        "SpeakerReopenDue": ev.SpeakerReopenDue(0.03),
        "Connected": ev.Connected(),
        "Disconnected(retry)": ev.Disconnected(ConnectionLost(1006, "gone")),
        "Disconnected(fatal)": ev.Disconnected(AuthError("wss://example.test/v1/realtime", 401)),
        "SessionCreated": ev.SessionCreated("sess_2", None),
        "SessionUpdated": ev.SessionUpdated(None),
        "InputCommitted": ev.InputCommitted("item_0"),
        "ResponseCreated": ev.ResponseCreated("resp_1"),
        "AudioDelta": ev.AudioDelta("resp_1", "item_1", _pcm(100)),
        "AudioDone": ev.AudioDone("resp_1", "item_1"),
        "TranscriptDone": ev.TranscriptDone("resp_1", "item_1", "Hello."),
        "ResponseDone(completed)": ev.ResponseDone("resp_1", "completed", None, {"total_tokens": 9}),
        "ResponseDone(failed)": ev.ResponseDone("resp_1", "failed", "server_error", None),
        "ItemTruncated": ev.ItemTruncated("item_1", 100),
        "ServerError(benign)": ev.ServerError("response_cancel_not_active", "no active response", None, None),
        "ServerError(fatal)": ev.ServerError("insufficient_quota", "quota", "insufficient_quota", None),
        "ServerError(names request)": ev.ServerError("server_error", "failed", "server_error", "req_1"),
        "ServerError(fatal, request)": ev.ServerError("unknown_parameter", "unknown", None, "req_1"),
        "ServerEvent": ev.ServerEvent("rate_limits.updated"),
        "Unknown": ev.Unknown("response.new_thing"),
        "BadEvent": ev.BadEvent("response.output_audio.delta", "bad_audio", "bad base64"),
        "ToolCall": ev.ToolCall("resp_1", "item_9", "call_1", "lookup_exhibit_knowledge", '{"query": "age"}'),
        "ToolResult": ev.ToolResult("call_1", '{"found": false}'),
        "ItemAdded": ev.ItemAdded("item_1"),
        "Spent": ev.Spent(1.0),
        **{f"Timeout({t.value})": ev.Timeout(t) for t in ev.Timer},
    }


def walk() -> list[str]:
    lines = []
    for phase, build in SCENARIOS.items():
        for name in samples(build()):
            w = build()
            assert w.k.phase.value == phase, f"scenario {phase} reached {w.k.phase.value}"
            try:
                w.feed(samples(w)[name])
                to = w.k.phase.value
            except LocalProtocolError:
                to = "bug"
            lines.append(f"{phase:<10}  {name:<28}  → {to}")
    return lines


def test_golden_table() -> None:
    """Every (public phase, input) pair leads where the golden file says; a changed row fails here."""
    got = walk()
    if os.environ.get("KIOSKD_UPDATE_GOLDEN"):
        GOLDEN.write_text("\n".join(got) + "\n")
    want = GOLDEN.read_text().splitlines()
    diff = [f"- {w}\n+ {g}" for w, g in zip(want, got) if w != g]
    assert len(got) == len(want) and not diff, "\n".join(diff[:20])


def test_no_input_from_outside_is_a_bug_in_any_phase() -> None:
    """No sample input, in any phase, makes the machines raise: every pair has a row or is ignored."""
    assert not [line for line in walk() if line.endswith("→ bug")]


def test_readme_shows_the_current_diagram() -> None:
    """The README's state diagram is exactly what scripts/state-diagram prints from the tables."""
    block = re.search(r"<!-- state-diagram -->\n```\n(.*?)\n```\n<!-- /state-diagram -->", README.read_text(), re.S)
    assert block is not None, "README.md lost its state-diagram block"
    assert block.group(1) == diagram(), "README.md's diagram is stale: paste ./scripts/state-diagram's output"


@pytest.mark.parametrize("phase", list(SCENARIOS))
def test_scenarios_reach_their_phase(phase: str) -> None:
    """The walk's scenarios, built from real inputs only, reach the phase they are named after."""
    assert SCENARIOS[phase]().k.phase.value == phase
