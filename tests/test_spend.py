"""The day's spending on real files: added per turn, kept across a restart, new each local day, written so that a
crash mid-write loses at most that turn."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import date
from pathlib import Path

from kioskd.core.events import Note
from kioskd.spend import STATE_FILE, DailySpend, state_dir
from tests.conftest import LogRecorder, run




def done(usd: float) -> Note:
    return Note("turn.done", "info", {"outcome": "answered", "cost_usd": usd})


def test_turns_add_up_and_survive_a_restart(tmp_path: Path) -> None:
    day = date(2026, 12, 2)
    spend = DailySpend(str(tmp_path / "state"), today=lambda: day)
    for usd in (0.0141, 0.0039, 0.0):
        spend.note(done(usd))
    spend.note(Note("turn.phase", "info", {}))  # not a turn
    spend.save()
    assert spend.status() == {"day": "2026-12-02", "today_usd": 0.018, "turns_today": 3}
    again = DailySpend(str(tmp_path / "state"), today=lambda: day)  # a restart
    assert again.status() == spend.status()
    assert os.stat(tmp_path / "state" / STATE_FILE).st_mode & 0o077 == 0


def test_a_new_local_day_starts_at_zero(tmp_path: Path) -> None:
    days = [date(2026, 12, 2)]
    spend = DailySpend(str(tmp_path), today=lambda: days[0])
    spend.note(done(0.5))
    spend.save()
    days[0] = date(2026, 12, 3)
    assert spend.status()["today_usd"] == 0.0
    assert DailySpend(str(tmp_path), today=lambda: days[0]).status()["today_usd"] == 0.0  # yesterday's file
    spend.note(done(0.25))
    assert spend.status() == {"day": "2026-12-03", "today_usd": 0.25, "turns_today": 1}


def test_a_torn_write_leaves_the_last_whole_total(tmp_path: Path) -> None:
    """A crash between the temporary file and the rename leaves the previous file whole: one turn lost at most."""
    day = date(2026, 12, 2)
    spend = DailySpend(str(tmp_path), today=lambda: day)
    spend.note(done(0.1))
    spend.save()
    (tmp_path / f"{STATE_FILE}.tmp").write_bytes(b'{"day": "2026-12-02", "us')  # the next write, cut short
    assert DailySpend(str(tmp_path), today=lambda: day).status()["today_usd"] == 0.1


def test_an_unreadable_file_starts_at_zero_and_says_so(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("not json")
    lines = LogRecorder()
    spend = DailySpend(str(tmp_path), today=lambda: date(2026, 12, 2), log=lines)  # type: ignore[arg-type]
    assert spend.status()["today_usd"] == 0.0
    [(event, fields)] = lines.lines
    assert event == "cost.state_unreadable" and fields["file"].endswith(STATE_FILE)


def test_the_writer_task_writes_soon_after_a_turn_off_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        spend = DailySpend(str(tmp_path), today=lambda: date(2026, 12, 2))
        task = asyncio.create_task(spend.run())
        spend.note(done(0.02))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if (tmp_path / STATE_FILE).exists():
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert json.loads((tmp_path / STATE_FILE).read_text())["usd"] == 0.02

    run(main())


def test_the_state_directory_is_systemds_else_xdgs() -> None:
    assert state_dir({"STATE_DIRECTORY": "/var/lib/kioskd:/other"}) == "/var/lib/kioskd"
    assert state_dir({"XDG_STATE_HOME": "/home/x/.state"}) == "/home/x/.state/kioskd"
    assert state_dir({}).endswith("/.local/state/kioskd")
