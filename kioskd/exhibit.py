"""The exhibit's own files, written by a curator: the knowledge file and the tools file.

Both are YAML lists, read with the config's rules (``config.read_small_text``: a small regular UTF-8 file) and
checked node by node, so every error names the file, the line and the entry's key, as a config error does
(``knowledge.yaml:14: [3].text: expected text, got a list``). They are loaded at start, by ``kioskd
check-config``, and on reload (a broken file is refused and the running one stays).

Knowledge file: ``- {topic: …, text: …, keywords: [...]}`` (``core/knowledge.py`` answers from it).
Tools file: ``- {type: opening_hours, weekly: {monday: "10:00-18:00", …}, exceptions: {2026-12-25: closed}}``
and ``- {type: http, name, description, parameters (a JSON schema object), url, timeout_s}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped]

from kioskd.config import read_small_text
from kioskd.core.hours import WEEKDAYS, Day, Hours, parse_spans
from kioskd.core.knowledge import Entry, Knowledge
from kioskd.errors import ConfigError

FILE_MAX_BYTES: Final = 1024 * 1024
ENTRIES_MAX: Final = 2000
TEXT_MAX_CHARS: Final = 2000
TOOLS_MAX: Final = 16
#: the Realtime API's function names: letters, digits, _ and -, at most 64
TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: names kioskd's own tools take
RESERVED_NAMES: Final = frozenset({"lookup_exhibit_knowledge", "opening_hours"})
HTTP_TIMEOUT_S: Final = 2.0
#: one tool's parameter schema, as JSON (all of them travel in every session.update and its echo)
SCHEMA_MAX_CHARS: Final = 4000


@dataclass(frozen=True)
class HttpTool:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    timeout_s: float = HTTP_TIMEOUT_S


@dataclass(frozen=True)
class Tools:
    hours: Hours | None = None
    http: tuple[HttpTool, ...] = field(default_factory=tuple)


class _Reader:
    """Walks a composed YAML document, raising ConfigError with the node's line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, node: yaml.Node | None, key: str | None, problem: str, hint: str | None = None) -> ConfigError:
        line = int(node.start_mark.line) + 1 if node is not None else None
        return ConfigError(self.filename, line, key, problem, hint)

    def root_list(self, text: str, what: str) -> list[yaml.Node]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise ConfigError(self.filename, mark.line + 1 if mark else None, None,
                              f"invalid YAML: {exc.problem or exc.context or 'unreadable'}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(self.filename, None, None, f"invalid YAML: {exc}") from None
        if root is None:
            return []
        if not isinstance(root, yaml.SequenceNode):
            raise self.fail(root, None, f"expected a list of {what}, one per '- ' item")
        return list(root.value)

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping of " + ", ".join(allowed))
        out: dict[str, yaml.Node] = {}
        for k_node, v_node in node.value:
            name = k_node.value if isinstance(k_node, yaml.ScalarNode) else None
            if name not in allowed:
                raise self.fail(k_node, key, f"unknown key {_short(name)}", "keys: " + ", ".join(allowed))
            if name in out:
                raise self.fail(k_node, f"{key}.{name}", "duplicate key")
            out[name] = v_node
        return out

    def text(self, node: yaml.Node, key: str, limit: int = TEXT_MAX_CHARS) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, key, f"expected text, got {_kind(node)}")
        value = str(node.value).strip()
        if not value:
            raise self.fail(node, key, "must not be empty")
        if len(value) > limit:
            raise self.fail(node, key, f"is {len(value):,} characters; the limit is {limit:,}")
        return value

    def required(self, fields: dict[str, yaml.Node], node: yaml.Node, key: str, name: str) -> yaml.Node:
        if name not in fields:
            raise self.fail(node, key, f"has no {name}")
        return fields[name]

    def value(self, node: yaml.Node) -> Any:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _items(path: str, config_key: str, what: str, plural: str, most: int) -> tuple[_Reader, list[yaml.Node]]:
    """The file's list items (at most ``most``), read as the config is read."""
    reader = _Reader(path)
    text, _ = read_small_text(path, config_key, what, FILE_MAX_BYTES)
    items = reader.root_list(text, plural)
    if len(items) > most:
        raise reader.fail(items[most], None, f"more than {most} {plural}")
    return reader, items


def load_knowledge(path: str) -> Knowledge:
    """The knowledge file's entries. Raises ConfigError (file, line, entry key)."""
    reader, items = _items(path, "exhibit.knowledge_file", "knowledge file", "entries", ENTRIES_MAX)
    entries = []
    for index, node in enumerate(items, start=1):
        key = f"[{index}]"
        fields = reader.mapping(node, key, ("topic", "text", "keywords"))
        topic = reader.text(reader.required(fields, node, key, "topic"), f"{key}.topic", 200)
        body = reader.text(reader.required(fields, node, key, "text"), f"{key}.text")
        keywords: tuple[str, ...] = ()
        if "keywords" in fields:
            kw_node = fields["keywords"]
            if not isinstance(kw_node, yaml.SequenceNode):
                raise reader.fail(kw_node, f"{key}.keywords", f"expected a list, got {_kind(kw_node)}")
            keywords = tuple(reader.text(k, f"{key}.keywords", 100) for k in kw_node.value)
        entries.append(Entry(topic, body, keywords, int(node.start_mark.line) + 1))
    if not entries:
        raise ConfigError(path, None, None, "has no entries")
    return Knowledge(entries)


def load_tools(path: str) -> Tools:
    """The tools file. Raises ConfigError (file, line, tool key)."""
    reader, items = _items(path, "exhibit.tools_file", "tools file", "tools", TOOLS_MAX)
    hours: Hours | None = None
    http: list[HttpTool] = []
    for index, node in enumerate(items, start=1):
        key = f"[{index}]"
        if not isinstance(node, yaml.MappingNode):
            raise reader.fail(node, key, "expected a mapping with a type")
        kind = next((v.value for k, v in node.value if getattr(k, "value", None) == "type"), None)
        if kind == "opening_hours":
            if hours is not None:
                raise reader.fail(node, key, "a second opening_hours tool")
            hours = _hours(reader, node, key)
        elif kind == "http":
            tool = _http(reader, node, key)
            if tool.name in RESERVED_NAMES or any(t.name == tool.name for t in http):
                raise reader.fail(node, f"{key}.name", f"{tool.name!r} is taken")
            http.append(tool)
        else:
            raise reader.fail(node, f"{key}.type", f"unknown type {_short(kind)}", "types: opening_hours, http")
    return Tools(hours, tuple(http))


def _hours(reader: _Reader, node: yaml.Node, key: str) -> Hours:
    fields = reader.mapping(node, key, ("type", "weekly", "exceptions"))
    weekly_node = reader.required(fields, node, key, "weekly")
    days = reader.mapping(weekly_node, f"{key}.weekly", WEEKDAYS)
    weekly = []
    for day in WEEKDAYS:
        if day not in days:
            raise reader.fail(weekly_node, f"{key}.weekly", f"has no {day}", 'write "closed" for a closed day')
        weekly.append(Day(_spans(reader, days[day], f"{key}.weekly.{day}")))
    exceptions: dict[date, Day] = {}
    if "exceptions" in fields:
        ex_node = fields["exceptions"]
        if not isinstance(ex_node, yaml.MappingNode):
            raise reader.fail(ex_node, f"{key}.exceptions", "expected a mapping of dates")
        for d_node, v_node in ex_node.value:
            on = reader.value(d_node)
            if not isinstance(on, date):
                raise reader.fail(d_node, f"{key}.exceptions", f"{_short(d_node.value)} is not a date like 2026-12-25")
            where = f"{key}.exceptions.{on}"
            if isinstance(v_node, yaml.MappingNode):
                parts = reader.mapping(v_node, where, ("hours", "note"))
                spans = _spans(reader, reader.required(parts, v_node, where, "hours"), f"{where}.hours")
                note = reader.text(parts["note"], f"{where}.note", 100) if "note" in parts else ""
                exceptions[on] = Day(spans, note)
            else:
                exceptions[on] = Day(_spans(reader, v_node, where))
    return Hours(tuple(weekly), exceptions)


def _spans(reader: _Reader, node: yaml.Node, key: str) -> tuple[Any, ...]:
    try:
        return parse_spans(reader.text(node, key, 200))
    except ValueError as exc:
        raise reader.fail(node, key, str(exc), 'write ranges like "10:00-13:00, 14:00-18:00", or "closed"') from None


def _http(reader: _Reader, node: yaml.Node, key: str) -> HttpTool:
    fields = reader.mapping(node, key, ("type", "name", "description", "parameters", "url", "timeout_s"))
    name = reader.text(reader.required(fields, node, key, "name"), f"{key}.name", 64)
    if not TOOL_NAME.match(name):
        raise reader.fail(fields["name"], f"{key}.name", "use letters, digits, _ and - only (at most 64)")
    description = reader.text(reader.required(fields, node, key, "description"), f"{key}.description", 1000)
    params_node = reader.required(fields, node, key, "parameters")
    parameters = reader.value(params_node)
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise reader.fail(params_node, f"{key}.parameters", "expected a JSON schema with type: object")
    try:  # it goes to the service as JSON: YAML's dates, .nan or a recursive alias cannot
        schema_size = len(json.dumps(parameters, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise reader.fail(params_node, f"{key}.parameters", f"is not plain JSON ({type(exc).__name__})",
                          "quote dates and special values") from None
    if schema_size > SCHEMA_MAX_CHARS:
        raise reader.fail(params_node, f"{key}.parameters", f"is {schema_size:,} characters of JSON; the limit is "
                                                            f"{SCHEMA_MAX_CHARS:,}")
    url_node = reader.required(fields, node, key, "url")
    url = reader.text(url_node, f"{key}.url", 500)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail(url_node, f"{key}.url", "expected an http:// or https:// URL")
    timeout_s = HTTP_TIMEOUT_S
    if "timeout_s" in fields:
        value = reader.value(fields["timeout_s"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 30:
            raise reader.fail(fields["timeout_s"], f"{key}.timeout_s", "expected seconds, more than 0 and at most 30")
        timeout_s = float(value)
    return HttpTool(name, description, parameters, url, timeout_s)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "nothing" if node.tag == "tag:yaml.org,2002:null" else "a value"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "…'"
