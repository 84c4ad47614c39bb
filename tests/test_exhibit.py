"""The curator's files: the knowledge file and the tools file, loaded from real files; every error names the
file, the line and the entry's key."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from kioskd.errors import ConfigError
from kioskd.exhibit import load_knowledge, load_tools
from tests.conftest import REPO

EXAMPLES = REPO / "config" / "examples"


def test_the_example_exhibit_loads() -> None:
    knowledge = load_knowledge(str(EXAMPLES / "knowledge.yaml"))
    assert len(knowledge.entries) == 12 and knowledge.entries[0].line == 6
    assert knowledge.search("how old is it")[0].topic == "When the mosaic was made"
    tools = load_tools(str(EXAMPLES / "tools.yaml"))
    assert tools.hours is not None and tools.http == ()
    answer = tools.hours.answer(datetime(2026, 12, 25, 12, 0))
    assert answer["open_now"] is False and answer["today"] == "closed (Christmas Day)"
    assert tools.hours.day(date(2026, 12, 3)).spans[0].end.hour == 21  # Thursday late opening


def error(tmp_path: Path, name: str, text: str) -> ConfigError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        (load_knowledge if name.startswith("knowledge") else load_tools)(str(path))
    assert info.value.file == str(path)
    return info.value


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("topic: x\n", 1, None, "expected a list of entries"),
    ("- topic: A\n  text: B\n- topic: C\n", 3, "[2]", "has no text"),
    ("- topic: A\n  text: [1, 2]\n", 2, "[1].text", "expected text, got a list"),
    ("- topic: A\n  txt: B\n", 2, "[1]", "unknown key 'txt'"),
    ("- topic: A\n  text: B\n  keywords: old\n", 3, "[1].keywords", "expected a list"),
    ("- topic: A\n  text: B\n  text: C\n", 3, "[1].text", "duplicate key"),
    ("- topic: A\n  text: 'unclosed\n", 3, None, "invalid YAML"),
    ("- topic: A\n  text: " + "x" * 2001 + "\n", 2, "[1].text", "the limit is 2,000"),
    ("", None, None, "has no entries"),
])
def test_knowledge_errors_name_file_line_and_entry(tmp_path: Path, text: str, line: int | None, key: str | None,
                                                   fragment: str) -> None:
    err = error(tmp_path, "knowledge.yaml", text)
    assert (err.line, err.key) == (line, key) and fragment in str(err), str(err)


HOURS = "- type: opening_hours\n  weekly:\n" + "".join(
    f"    {d}: closed\n" for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    (HOURS, 3, "[1].weekly", "has no sunday"),
    (HOURS + "    sunday: 10-18\n", 9, "[1].weekly.sunday", "is not a range like 10:00-18:00"),
    (HOURS + "    sunday: closed\n  exceptions:\n    christmas: closed\n", 11, "[1].exceptions", "is not a date"),
    (HOURS + "    sunday: closed\n  exceptions:\n    2026-12-25: {note: X}\n", 11, "[1].exceptions.2026-12-25",
     "has no hours"),
    ("- type: weather\n", 1, "[1].type", "unknown type 'weather'"),
    ("- type: http\n  name: next tour\n  description: d\n  parameters: {type: object}\n  url: http://x/\n", 2,
     "[1].name", "letters, digits"),
    ("- type: http\n  name: tours\n  description: d\n  parameters: {type: string}\n  url: http://x/\n", 4,
     "[1].parameters", "type: object"),
    ("- type: http\n  name: tours\n  description: d\n  parameters: {type: object}\n  url: ftp://x/\n", 5,
     "[1].url", "http:// or https://"),
    ("- type: http\n  name: tours\n  description: d\n  parameters: {type: object}\n  url: http://x/\n"
     "  timeout_s: 0\n", 6, "[1].timeout_s", "more than 0"),
    ("- type: http\n  name: opening_hours\n  description: d\n  parameters: {type: object}\n  url: http://x/\n", 1,
     "[1].name", "is taken"),
    ("- type: http\n  name: tours\n  description: d\n  parameters:\n    type: object\n    properties:\n"
     "      day: {type: string, default: 2026-12-25}\n  url: http://x/\n", 5, "[1].parameters", "not plain JSON"),
])
def test_tools_errors_name_file_line_and_tool(tmp_path: Path, text: str, line: int, key: str,
                                              fragment: str) -> None:
    err = error(tmp_path, "tools.yaml", text)
    assert (err.line, err.key) == (line, key) and fragment in str(err), str(err)


def test_an_http_tool_loads_with_its_schema_and_timeout(tmp_path: Path) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text("- type: http\n  name: next_tour\n  description: When the next guided tour starts.\n"
                    "  parameters:\n    type: object\n    properties:\n      language: {type: string}\n"
                    "  url: http://127.0.0.1:8080/tours\n  timeout_s: 1.5\n")
    [tool] = load_tools(str(path)).http
    assert tool.name == "next_tour" and tool.timeout_s == 1.5
    assert tool.parameters == {"type": "object", "properties": {"language": {"type": "string"}}}


def test_a_knowledge_file_that_is_a_fifo_is_refused_unread(tmp_path: Path) -> None:
    import os

    path = tmp_path / "knowledge.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file but a FIFO"):
        load_knowledge(str(path))
