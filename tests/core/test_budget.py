"""The museum's daily budget in the core: once today's spending reaches it, a press gets the spoken "come back
later" and nothing is sent; midnight (the spend store's Spent(0)) opens the kiosk again."""

from __future__ import annotations

from dataclasses import replace

from kioskd.core import events as ev
from tests.core.drive import SETTINGS, earcons, leds, note, notes, online, said

BUDGET = replace(SETTINGS, turn=replace(SETTINGS.turn, daily_budget_usd=0.50))


def test_a_spent_budget_closes_the_kiosk_until_midnight() -> None:
    d = online(BUDGET)
    assert d.feed(ev.Spent(0.49)) == [] and d.phase == "idle"  # under the budget: nothing changes
    out = d.feed(ev.Spent(0.5012))
    assert note(out, "cost.budget_spent").fields == {"today_usd": 0.5012, "budget_usd": 0.5}
    assert d.phase == "closed" and leds(out) == [ev.Led.CLOSED]
    out = d.press(after_s=1.0)
    assert said(out) == [] and earcons(out) == [ev.Earcon.CLOSED]
    assert note(out, "turn.rejected").fields == {"reason": "budget"} and not notes(out, "turn.done")
    d.release(after_s=1.0)
    assert not d.done_lines()  # a refused press is not a turn
    out = d.feed(ev.Spent(0.0), after_s=3600)  # local midnight
    assert notes(out, "cost.budget_reopened") and d.phase == "idle" and leds(out) == [ev.Led.IDLE]
    assert "StartQuestion" in [type(a).__name__ for a in said(d.press(after_s=1.0))]


def test_no_budget_never_closes() -> None:
    d = online()
    assert d.feed(ev.Spent(1e6)) == [] and d.phase == "idle"


def test_the_budget_is_checked_between_visitors_not_mid_turn() -> None:
    """The turn that spends the last cent is heard to its end: the kiosk closes once it is back in idle."""
    from tests.core.drive import ask, done, speaking

    d = online(BUDGET)
    ask(d)
    speaking(d)
    d.feed(ev.Spent(0.9))  # another turn's line raised the total meanwhile
    assert d.phase == "speaking"
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    out = d.feed(ev.PlaybackDrained(0), after_s=1.2)
    assert d.phase == "closed" and leds(out) == [ev.Led.CLOSED]
