"""Opening hours answered for a local time: open now, closing time, next opening, dated exceptions."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from kioskd.core.hours import Day, Hours, parse_spans

WEEK = Hours(
    weekly=(Day(),) + (Day(parse_spans("10:00-13:00, 14:00-18:00")),) * 5 + (Day(parse_spans("11:00-16:00")),),
    exceptions={date(2026, 12, 25): Day((), "Christmas Day"),
                date(2026, 12, 24): Day(parse_spans("10:00-14:00"), "Christmas Eve")},
)


def test_open_now_says_when_it_closes() -> None:
    answer = WEEK.answer(datetime(2026, 12, 2, 15, 30))  # a Wednesday
    assert answer["local_time"] == "Wednesday 2026-12-02 15:30"
    assert answer["open_now"] is True and answer["closes_at"] == "18:00"
    assert answer["today"] == "10:00-13:00, 14:00-18:00" and "next_opening" not in answer


def test_over_lunch_it_is_closed_and_opens_again_the_same_day() -> None:
    answer = WEEK.answer(datetime(2026, 12, 2, 13, 15))
    assert answer["open_now"] is False and answer["next_opening"] == "Wednesday 2026-12-02 14:00"


def test_closed_on_monday_the_next_opening_is_tuesday() -> None:
    answer = WEEK.answer(datetime(2026, 12, 7, 9, 0))  # a Monday
    assert answer["open_now"] is False and answer["today"] == "closed"
    assert answer["next_opening"] == "Tuesday 2026-12-08 10:00"


def test_dated_exceptions_override_the_week_with_their_note() -> None:
    eve = WEEK.answer(datetime(2026, 12, 24, 15, 0))  # a Thursday, short day
    assert eve["open_now"] is False and eve["today"] == "10:00-14:00 (Christmas Eve)"
    assert eve["next_opening"] == "Saturday 2026-12-26 10:00"  # Christmas Day is closed
    assert eve["week"]["Friday 2026-12-25"] == "closed (Christmas Day)"
    assert len(eve["week"]) == 7 and eve["week"]["Sunday 2026-12-27"] == "11:00-16:00"


def test_the_end_of_a_span_is_closed() -> None:
    assert WEEK.answer(datetime(2026, 12, 2, 18, 0))["open_now"] is False


@pytest.mark.parametrize(("text", "problem"), [
    ("10-18", "is not a range"), ("25:00-26:00", "is not a time of day"), ("18:00-10:00", "ends before it starts"),
    ("10:00-14:00, 13:00-15:00", "overlap"),
])
def test_bad_ranges_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_spans(text)


def test_closed_and_until_midnight_parse() -> None:
    assert parse_spans("closed") == () and parse_spans(" Closed ") == ()
    assert str(parse_spans("18:00-24:00")[0]) == "18:00-23:59"
