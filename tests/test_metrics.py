"""The status counters (metrics.StatusSink) fed the core's notes."""

from __future__ import annotations

from kioskd.core.events import Note
from kioskd.metrics import StatusSink


def test_notes_held_back_are_counted_when_their_summary_comes() -> None:
    """Five ws.server_error lines said, then a log.suppressed counting 4,995 more: status counts 5,000."""
    sink = StatusSink()
    for _ in range(5):
        sink.note(Note("ws.server_error", "warning", {"code": "server_error"}))
    sink.note(Note("log.suppressed", "warning", {"name": "ws.server_error", "count": 4995, "over_s": 60.0}))
    assert sink.status()["events"] == {"ws.server_error": 5000, "log.suppressed": 1}


def done(model: str, sound_ms: int | None, cost: float, backend: str = "realtime", route: str = "main") -> Note:
    return Note("turn.done", "info", {"outcome": "answered" if sound_ms else "too_short", "backend": backend,
                                      "model": model, "release_to_first_sound_ms": sound_ms, "cost_usd": cost,
                                      "route": route})


def test_stats_break_latency_and_cost_per_turn_down_by_arm() -> None:
    """Per backend and model: release → first sound p50 / p95 over the turns that played (nearest rank), and
    the mean cost of every turn, a too-short one included."""
    sink = StatusSink()
    for ms in (300, 240, 260, 250, 900):
        sink.note(done("gpt-realtime", ms, 0.012))
    sink.note(done("gpt-realtime", None, 0.0))
    sink.note(done("gpt-audio-1.5", 700, 0.013, backend="chat"))
    arms = sink.stats()["arms"]
    realtime = arms["realtime/gpt-realtime"]
    assert realtime["turns"] == 6 and realtime["release_to_first_sound_ms"] == {"p50": 260.0, "p95": 900.0}
    assert realtime["cost_per_turn_usd"] == 0.01
    chat = arms["chat/gpt-audio-1.5"]
    assert (chat["backend"], chat["model"], chat["turns"]) == ("chat", "gpt-audio-1.5", 1)
    assert chat["release_to_first_sound_ms"] == {"p50": 700.0, "p95": 700.0}


def test_stats_are_bounded_in_arms_and_turns() -> None:
    from kioskd.metrics import ARMS_MAX, TURNS_KEPT

    sink = StatusSink()
    for n in range(ARMS_MAX + 5):
        sink.note(done(f"model-{n}", 300, 0.01))
    for _ in range(TURNS_KEPT + 10):
        sink.note(done("model-0", 300, 0.01))
    arms = sink.stats()["arms"]
    assert len(arms) == ARMS_MAX and arms["realtime/model-0"]["turns"] == TURNS_KEPT


def test_the_ab_section_counts_only_the_visitors_the_test_drew() -> None:
    """Fallback turns during an outage are the chat arm's in ``arms`` but never in the A/B comparison."""
    sink = StatusSink()
    sink.note(done("gpt-audio-1.5", 2000, 0.02, backend="chat", route="fallback"))
    sink.note(done("gpt-audio-1.5", 800, 0.013, backend="chat", route="ab"))
    sink.note(done("gpt-realtime", 300, 0.012, route="ab"))
    sink.note(done("gpt-realtime", 280, 0.012))
    stats = sink.stats()
    assert stats["arms"]["chat/gpt-audio-1.5"]["turns"] == 2 and stats["arms"]["realtime/gpt-realtime"]["turns"] == 2
    ab = stats["ab"]
    assert ab["chat/gpt-audio-1.5"]["turns"] == 1 and ab["chat/gpt-audio-1.5"]["release_to_first_sound_ms"]["p50"] == 800
    assert ab["realtime/gpt-realtime"]["turns"] == 1
