"""The underflow guard: when repeated gaps ask for a longer device queue (pure, no clock)."""

from __future__ import annotations

from kioskd.core.underflow import UnderflowGuard


def test_underflow_guard_doubles_the_latency_after_repeated_heard_underflows() -> None:
    """Three heard underflows within a minute ask for double the latency; sparse ones, or a latency at the cap,
    do not; after a raise the count starts anew."""
    guard = UnderflowGuard(0.015, limit=3, window_s=60.0, max_latency_s=0.1)
    assert guard.observe(0.0, 0) is None
    assert guard.observe(10.0, 2) is None
    assert guard.observe(80.0, 3) is None  # the first two fell out of the window
    assert guard.observe(90.0, 5) == 0.03  # three within 60 s
    assert guard.observe(91.0, 5) == 0.03  # still due until it is done (the daemon waits for IDLE)
    assert guard.raised(0.03) == 3
    assert guard.observe(92.0, 6) is None and guard.latency_s == 0.03
    assert guard.observe(93.0, 8) == 0.06
    guard.raised(0.06)
    assert guard.observe(94.0, 11) == 0.1  # capped
    guard.raised(0.1)
    assert guard.observe(95.0, 20) is None and guard.at_limit


def test_a_guard_that_gave_up_asks_no_more_and_counts_towards_its_limit() -> None:
    """A device that refused a longer queue (or granted none): the guard keeps the latency it had, asks no more
    (so the speaker is not reopened on every visit), and further gaps count towards at_limit (audio.underflows)."""
    guard = UnderflowGuard(0.015, limit=3, window_s=60.0, max_latency_s=0.1)
    assert guard.observe(1.0, 3) == 0.03
    guard.give_up()
    assert guard.observe(2.0, 3) is None and guard.latency_s == 0.015 and guard.at_limit
    guard.raised(0.015)  # (what a caller does not do after giving up; the count starts anew either way)
    assert guard.observe(3.0, 4) is None and not guard.at_limit
    assert guard.observe(4.0, 6) is None and guard.at_limit
