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
