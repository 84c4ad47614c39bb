"""Prometheus metrics (kioskd/prom.py): the sink fed the core's notes, read back from its own registry; the token
kinds of both usage shapes; bounded labels; a real HTTP listener scraped with httpx and parsed by
prometheus_client's parser; the node_exporter textfile; the config keys; the Grafana dashboard; and `kioskd run`
serving them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kioskd import config
from kioskd.config import MetricsConfig
from kioskd.core.cost import DEFAULT_PRICES, chat_cost_usd, realtime_cost_usd
from kioskd.core.events import Note
from kioskd.core.settings import ModelArm, TurnSettings
from kioskd.errors import ConfigError
from kioskd.prom import (CAUSES_MAX, MAX_SCRAPES, OTHER, TOKEN_KINDS, MetricsServer, PrometheusSink, Textfile,
                         serving, shutdown_timestamp, token_kinds)
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, wait_for
from tests.conftest import REPO, UNIT_S, LogRecorder, run

REALTIME_USAGE = {
    "total_tokens": 1500, "input_tokens": 1200, "output_tokens": 300,
    "input_token_details": {"text_tokens": 1000, "audio_tokens": 200, "cached_tokens": 900,
                            "cached_tokens_details": {"text_tokens": 800, "audio_tokens": 100}},
    "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
}
CHAT_USAGE = {
    "prompt_tokens": 700, "completion_tokens": 400, "total_tokens": 1100,
    "prompt_tokens_details": {"audio_tokens": 150, "cached_tokens": 200},
    "completion_tokens_details": {"audio_tokens": 350, "reasoning_tokens": 0},
}


def done(**fields: Any) -> Note:
    base = {"outcome": "answered", "backend": "realtime", "model": "gpt-realtime", "release_to_first_sound_ms": 320,
            "underruns": 0, "cost_usd": 0.0, "route": "main"}
    return Note("turn.done", "info", {**base, **fields})


def value(sink: PrometheusSink, name: str, **labels: str) -> float | None:
    return sink.registry.get_sample_value(name, labels)


def series(sink: PrometheusSink, name: str) -> list[dict[str, str]]:
    return [s.labels for family in sink.registry.collect() for s in family.samples if s.name == name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


# ---------------------------------------------------------------------------------------------------- tokens


def test_realtime_usage_splits_into_disjoint_kinds() -> None:
    """The cached input is taken out of text_in and audio_in: the kinds add up to every token."""
    assert token_kinds(REALTIME_USAGE) == {"text_in": 200, "audio_in": 100, "cached_in": 900, "text_out": 60,
                                           "audio_out": 240}
    assert sum(token_kinds(REALTIME_USAGE).values()) == REALTIME_USAGE["total_tokens"]


def test_chat_usage_splits_into_disjoint_kinds() -> None:
    """Chat Completions names its tokens prompt/completion: the text share is what the audio share leaves, and the
    cached share is taken from the audio first, as core/cost.py bills it."""
    assert token_kinds(CHAT_USAGE) == {"text_in": 500, "cached_in": 200, "text_out": 50, "audio_out": 350}
    assert sum(token_kinds(CHAT_USAGE).values()) == CHAT_USAGE["total_tokens"]


@pytest.mark.parametrize("usage", [REALTIME_USAGE, CHAT_USAGE])
def test_token_kinds_price_to_the_turns_cost(usage: dict[str, Any]) -> None:
    """Priced kind by kind (a model whose cached text and audio cost the same), the kinds give core/cost.py's
    figure: the split is the one kioskd bills."""
    prices = DEFAULT_PRICES["gpt-realtime"]
    assert prices.text_cached == prices.audio_cached
    per_kind = {"text_in": prices.text_in, "audio_in": prices.audio_in, "cached_in": prices.text_cached,
                "text_out": prices.text_out, "audio_out": prices.audio_out}
    kinds = token_kinds(usage)
    if "prompt_tokens" in usage:  # the cached share is audio first, here all 150 audio tokens and 50 text ones
        expected = chat_cost_usd(usage, prices)
    else:
        expected = realtime_cost_usd(usage, prices)
    assert expected is not None
    assert sum(n * per_kind[k] for k, n in kinds.items()) / 1e6 == pytest.approx(expected)


@pytest.mark.parametrize("usage", [None, "{\"input_tokens\": 3} (cut)", [], {}, {"input_tokens": 5},
                                   {"input_token_details": {"text_tokens": True, "audio_tokens": -4}},
                                   {"prompt_tokens": "many", "completion_tokens": 3.5},
                                   {"input_token_details": {"text_tokens": 10,
                                                            "cached_tokens_details": {"text_tokens": 99}}}])
def test_malformed_usage_counts_what_it_can_and_never_raises(usage: Any) -> None:
    kinds = token_kinds(usage)
    assert set(kinds) <= set(TOKEN_KINDS) and all(isinstance(n, int) and n > 0 for n in kinds.values())
    if isinstance(usage, dict) and "input_token_details" in usage and usage["input_token_details"].get(
            "text_tokens") == 10:
        assert kinds == {"cached_in": 10}  # a cached share over the input is cut to it


# ---------------------------------------------------------------------------------------------------- the sink


def test_turns_latency_underruns_cost_and_tokens_come_from_turn_done() -> None:
    sink = PrometheusSink()
    sink.note(done(release_to_first_sound_ms=350, underruns=2, cost_usd=0.0125, usage=REALTIME_USAGE))
    sink.note(done(outcome="interrupted", release_to_first_sound_ms=1200, underruns=1, cost_usd=0.01))
    sink.note(done(outcome="too_short", release_to_first_sound_ms=None, cost_usd=0.0))
    sink.note(done(backend="chat", model="gpt-audio-1.5", release_to_first_sound_ms=2400, cost_usd=0.02,
                   usage=CHAT_USAGE, route="fallback"))
    arm = {"backend": "realtime", "model": "gpt-realtime"}
    assert value(sink, "kioskd_turns_total", outcome="answered", **arm) == 1
    assert value(sink, "kioskd_turns_total", outcome="interrupted", **arm) == 1
    assert value(sink, "kioskd_turns_total", outcome="too_short", **arm) == 1
    assert value(sink, "kioskd_turns_total", outcome="answered", backend="chat", model="gpt-audio-1.5") == 1
    # the histogram: only the turns that played, in seconds
    assert value(sink, "kioskd_release_to_first_sound_seconds_count", **arm) == 2
    assert value(sink, "kioskd_release_to_first_sound_seconds_sum", **arm) == pytest.approx(1.55)
    assert value(sink, "kioskd_release_to_first_sound_seconds_bucket", le="0.4", **arm) == 1
    assert value(sink, "kioskd_release_to_first_sound_seconds_bucket", le="1.5", **arm) == 2
    assert value(sink, "kioskd_release_to_first_sound_seconds_bucket", le="3.0", backend="chat",
                 model="gpt-audio-1.5") == 1
    assert value(sink, "kioskd_underruns_total") == 3
    assert value(sink, "kioskd_cost_usd_total", **arm) == pytest.approx(0.0225)
    assert value(sink, "kioskd_cost_usd_total", backend="chat", model="gpt-audio-1.5") == pytest.approx(0.02)
    for kind in TOKEN_KINDS:
        expected = token_kinds(REALTIME_USAGE).get(kind, 0) + token_kinds(CHAT_USAGE).get(kind, 0)
        assert value(sink, "kioskd_tokens_total", kind=kind) == expected


def test_refused_presses_reconnects_and_faults() -> None:
    sink = PrometheusSink()
    assert value(sink, "kioskd_refused_presses_total", reason="offline") == 0  # exported before the first
    for reason in ("offline", "offline", "budget", "press_flood"):
        sink.note(Note("turn.rejected", "warning", {"reason": reason}))
    sink.note(Note("ws.disconnected", "warning", {"error": "x", "error_type": "ConnectionLost", "phase": "ready",
                                                  "retry_in_s": 0.4}))
    sink.note(Note("ws.connect_timeout", "warning", {"timeout_s": 10, "retry_in_s": 1.2}))
    sink.note(Note("ws.fault", "error", {"error": "HTTP 401", "error_type": "AuthError", "phase": "connecting",
                                         "retry_in_s": 120}))
    sink.note(Note("daemon.bug_limit", "error", {"cause": "3 kioskd bugs within 600 s"}))
    sink.fault("device_lost")
    assert value(sink, "kioskd_refused_presses_total", reason="offline") == 2
    assert value(sink, "kioskd_refused_presses_total", reason="budget") == 1
    assert value(sink, "kioskd_refused_presses_total", reason="press_flood") == 1
    assert value(sink, "kioskd_reconnects_total") == 2
    assert value(sink, "kioskd_faults_total", cause="AuthError") == 1
    assert value(sink, "kioskd_faults_total", cause="bug_limit") == 1
    assert value(sink, "kioskd_faults_total", cause="device_lost") == 1


def test_connected_follows_the_realtime_link() -> None:
    sink = PrometheusSink()
    steps = [
        (Note("turn.phase", "info", {"from": None, "to": "connecting"}), 0),
        (Note("ws.ready", "info"), 1),
        (Note("turn.phase", "info", {"from": "connecting", "to": "idle"}), 1),
        (Note("turn.phase", "info", {"from": "idle", "to": "listening"}), 1),
        (Note("ws.recycle", "info"), 0),  # a renewal closes the session
        (Note("ws.ready", "info"), 1),
        (Note("ws.disconnected", "warning", {"error_type": "ConnectionLost"}), 0),
        (Note("ws.ready", "info"), 1),
        (Note("turn.phase", "info", {"from": "idle", "to": "offline"}), 0),
        (Note("ws.ready", "info"), 1),
        (Note("ws.fault", "error", {"error_type": "AuthError"}), 0),
    ]
    for note, connected in steps:
        sink.note(note)
        assert value(sink, "kioskd_connected") == connected, note


def test_phase_is_one_for_the_current_phase_only() -> None:
    sink = PrometheusSink()
    assert value(sink, "kioskd_phase", phase="starting") == 1
    sink.note(Note("turn.phase", "info", {"from": None, "to": "connecting"}))
    sink.note(Note("turn.phase", "info", {"from": "connecting", "to": "closed"}))
    phases = {s["phase"]: value(sink, "kioskd_phase", **s) for s in series(sink, "kioskd_phase")}
    assert phases["closed"] == 1 and sum(v or 0 for v in phases.values()) == 1
    sink.set_phase("device_missing")
    assert value(sink, "kioskd_phase", phase="device_missing") == 1 and value(sink, "kioskd_phase",
                                                                               phase="closed") == 0
    sink.set_phase("something new")  # a phase kioskd does not export: none is 1, no series is added
    assert all(value(sink, "kioskd_phase", **s) == 0 for s in series(sink, "kioskd_phase"))
    assert len(series(sink, "kioskd_phase")) == 10


def test_every_arm_the_config_names_is_exported_from_the_start() -> None:
    """So the first turn of each arm is seen by increase(): every outcome at 0 for the main model, its degrade,
    the fallback and an A/B arm."""
    sink = PrometheusSink()
    sink.expect_arms(TurnSettings(model="gpt-realtime", fallback=ModelArm("chat", "gpt-audio-1.5", None),
                                  degrade=ModelArm("realtime", "gpt-realtime-mini", None)))
    arms = {(s["backend"], s["model"]) for s in series(sink, "kioskd_turns_total")}
    assert arms == {("realtime", "gpt-realtime"), ("chat", "gpt-audio-1.5"), ("realtime", "gpt-realtime-mini")}
    assert value(sink, "kioskd_turns_total", outcome="failed", backend="chat", model="gpt-audio-1.5") == 0
    assert value(sink, "kioskd_cost_usd_total", backend="realtime", model="gpt-realtime-mini") == 0


def test_label_values_are_bounded() -> None:
    """A flood of distinct error types, outcomes, reasons and models (whatever a server or a bug makes of them)
    adds a bounded number of series; text that is no name never becomes a label value."""
    sink = PrometheusSink()
    before = sum(1 for f in sink.registry.collect() for _ in f.samples)
    for n in range(2000):
        sink.note(Note("ws.fault", "error", {"error_type": f"Error{n}"}))
        sink.note(Note("turn.rejected", "warning", {"reason": f"reason {n}"}))
        sink.note(done(outcome=f"outcome{n}", model=f"model-{n}", backend=f"backend{n}"))
    sink.note(Note("ws.fault", "error", {"error_type": "bad name {with} \"quotes\"\n"}))
    sink.note(Note("ws.fault", "error", {}))
    causes = {s["cause"] for s in series(sink, "kioskd_faults_total")}
    assert len(causes) == CAUSES_MAX + 1 and OTHER in causes
    assert value(sink, "kioskd_faults_total", cause=OTHER) == 2000 - (CAUSES_MAX - 2) + 2
    reasons = {s["reason"] for s in series(sink, "kioskd_refused_presses_total")}
    assert reasons == {"connecting", "offline", "fault", "press_flood", "budget", OTHER}
    outcomes = {s["outcome"] for s in series(sink, "kioskd_turns_total")}
    assert outcomes == {OTHER}
    models = {s["model"] for s in series(sink, "kioskd_turns_total")}
    assert len(models) == 9 and OTHER in models
    assert {s["backend"] for s in series(sink, "kioskd_turns_total")} == {OTHER}
    after = sum(1 for f in sink.registry.collect() for _ in f.samples)
    assert after - before < 250


def test_fields_cut_to_text_or_absurd_are_not_counted() -> None:
    """core/bound.py may have cut a field to text; a bug may send a negative or NaN: counted as nothing, never
    raising (an exception here would cost the sinks after this one their note)."""
    sink = PrometheusSink()
    sink.note(done(release_to_first_sound_ms="350… (+4 chars)", underruns=-3, cost_usd=float("nan"),
                   usage="{\"input_tokens\": 1… (+600 chars)"))
    sink.note(done(release_to_first_sound_ms=True, underruns=True, cost_usd=-1.0, usage=None))
    sink.note(Note("turn.done", "info", {}))
    sink.note(Note("turn.phase", "info", {"to": 3}))
    assert value(sink, "kioskd_underruns_total") == 0
    assert not value(sink, "kioskd_release_to_first_sound_seconds_count", backend="realtime", model="gpt-realtime")
    assert not value(sink, "kioskd_cost_usd_total", backend="realtime", model="gpt-realtime")
    assert sum(value(sink, "kioskd_turns_total", **s) or 0 for s in series(sink, "kioskd_turns_total")) == 3


class Lifecycle:
    def __init__(self, model: str, state: dict[str, Any]) -> None:
        self.model, self.state = model, state


def test_model_shutdown_dates_are_read_at_scrape_time() -> None:
    models = [Lifecycle("gpt-realtime", {"model": "gpt-realtime", "checked": None})]
    sink = PrometheusSink(models=lambda: models)
    assert series(sink, "kioskd_model_shutdown_timestamp_seconds") == []  # not looked up yet
    models[0].state = {"model": "gpt-realtime", "checked": "2026-01-02", "shutdown_date": "2026-03-24"}
    models.append(Lifecycle("gpt-audio-1.5", {"model": "gpt-audio-1.5", "shutdown_date": None}))
    models.append(Lifecycle("odd", {"shutdown_date": "soon, they say"}))
    assert value(sink, "kioskd_model_shutdown_timestamp_seconds", model="gpt-realtime") == 1774310400.0
    assert [s["model"] for s in series(sink, "kioskd_model_shutdown_timestamp_seconds")] == ["gpt-realtime"]
    assert shutdown_timestamp("2026-03-24T00:00:00Z") == 1774310400.0 and shutdown_timestamp(None) is None


# ---------------------------------------------------------------------------------------------------- serving


def test_a_real_listener_serves_the_library_exposition_and_stops() -> None:
    """`serving` with metrics.listen: scraped over HTTP with httpx, parsed back by prometheus_client's parser;
    after the block the port is closed."""
    port = free_port()
    log = LogRecorder()

    async def scenario() -> str:
        sink = PrometheusSink()
        async with serving(sink, MetricsConfig(listen=f"127.0.0.1:{port}"), log) as server:
            assert server is not None and server.port == port
            sink.note(done(release_to_first_sound_ms=420, cost_usd=0.013, usage=REALTIME_USAGE))
            sink.note(Note("ws.ready", "info"))
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            text = response.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics")
        return text

    text = run(scenario())
    parsed = families(text)
    turns = {tuple(sorted(s.labels.items())): s.value for s in parsed["kioskd_turns"].samples}
    assert turns[(("backend", "realtime"), ("model", "gpt-realtime"), ("outcome", "answered"))] == 1
    assert parsed["kioskd_release_to_first_sound_seconds"].type == "histogram"
    assert parsed["kioskd_connected"].samples[0].value == 1
    assert parsed["kioskd_cost_usd"].samples[0].value == pytest.approx(0.013)
    assert parsed["kioskd_process_resident_memory_bytes"].samples[0].value > 0
    assert not any(name.endswith("_created") for name in parsed)
    assert ("info", "metrics.listening", {"listen": f"127.0.0.1:{port}", "port": port}) in log.records


def test_a_port_that_cannot_be_bound_is_said_and_the_kiosk_goes_on() -> None:
    log = LogRecorder()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            async with serving(PrometheusSink(), MetricsConfig(listen=f"127.0.0.1:{port}"), log) as server:
                assert server is None

        run(scenario())
    [(level, event, fields)] = log.records
    assert (level, event, fields["listen"], fields["error_type"]) == ("error", "metrics.listen_failed",
                                                                      f"127.0.0.1:{port}", "OSError")


def test_scrapes_at_once_are_bounded_and_idle_clients_time_out() -> None:
    """MAX_SCRAPES connections that send nothing hold every slot: one more is closed at once (no thread started)
    until they time out; then a scrape is served again."""
    sink = PrometheusSink()
    server = MetricsServer("127.0.0.1", 0, sink.registry, max_scrapes=MAX_SCRAPES, timeout_s=0.5 * UNIT_S)
    idle: list[socket.socket] = []
    try:
        for _ in range(MAX_SCRAPES):
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
        wait_for(lambda: server._slots._value == 0, "the idle clients' slots", 5 * UNIT_S)  # type: ignore[attr-defined]
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.settimeout(5 * UNIT_S)
            assert extra.recv(100) == b""  # closed at once, unread: the slots are taken
        assert server.refused == 1
        for s in idle:  # the server dropped them after its timeout
            s.settimeout(5 * UNIT_S)
            assert s.recv(100) == b""
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5 * UNIT_S)
        assert response.status_code == 200 and "kioskd_turns_total" in response.text
    finally:
        for s in idle:
            s.close()
        server.close()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_the_textfile_is_written_readable_by_all_and_finally_at_stop(tmp_path: Path) -> None:
    """Under the unit's UMask=0077 the file is still 0644 (node_exporter runs as another user); written at once,
    then every interval, and once more at stop with the last counts; no temporary file is left behind."""
    path = tmp_path / "kioskd.prom"

    async def scenario() -> None:
        sink = PrometheusSink()
        async with serving(sink, MetricsConfig(textfile=str(path), textfile_interval_s=3600)) as server:
            assert server is None
            for _ in range(200):
                if path.exists():
                    break
                await asyncio.sleep(0.01)
            first = families(path.read_text())
            assert all(s.value == 0 for s in first["kioskd_turns"].samples)
            sink.note(done(outcome="failed", release_to_first_sound_ms=None))

    with umask(0o077):
        run(scenario())
    assert path.stat().st_mode & 0o777 == 0o644
    parsed = families(path.read_text())
    [failed] = [s for s in parsed["kioskd_turns"].samples if s.labels["outcome"] == "failed"]
    assert failed.value == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kioskd.prom"]


def test_a_textfile_that_cannot_be_written_is_said_once(tmp_path: Path) -> None:
    log = LogRecorder()
    textfile = Textfile(str(tmp_path / "missing" / "kioskd.prom"), PrometheusSink().registry, log)
    textfile.write()
    textfile.write()
    (tmp_path / "missing").mkdir()
    textfile.write()
    (tmp_path / "missing" / "kioskd.prom").unlink()
    (tmp_path / "missing").rmdir()
    textfile.write()
    events = [(level, event) for level, event, _ in log.records]
    assert events == [("warning", "metrics.textfile_failed")] * 2  # once, and again after a write worked
    assert log.records[0][2]["file"].endswith("missing/kioskd.prom")


# ---------------------------------------------------------------------------------------------------- config


def test_metrics_config_defaults_off_and_parses() -> None:
    assert config.load(None).metrics == MetricsConfig(listen=None, textfile=None, textfile_interval_s=30.0)
    cfg = config.parse("metrics:\n  listen: 192.168.1.20:9464\n  textfile: prom/kioskd.prom\n"
                       "  textfile_interval_s: 15\n", "/etc/kioskd/kioskd.yaml")
    assert cfg.metrics == MetricsConfig("192.168.1.20:9464", "/etc/kioskd/prom/kioskd.prom", 15.0)
    assert config.listen_address("[::]:9464") == ("::", 9464)
    assert config.listen_address("0.0.0.0:9464") == ("0.0.0.0", 9464)
    assert config.listen_address("kiosk-7.local:80") == ("kiosk-7.local", 80)


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("metrics:\n  listen: 9464\n", 2, "metrics.listen", "expected a string"),
    ("metrics:\n  listen: '9464'\n", 2, "metrics.listen", "must be HOST:PORT"),
    ("metrics:\n  listen: ':9464'\n", 2, "metrics.listen", "names no host"),
    ("metrics:\n  listen: 0.0.0.0:http\n", 2, "metrics.listen", "must be HOST:PORT"),
    ("metrics:\n  listen: 0.0.0.0:70000\n", 2, "metrics.listen", "outside 1..65535"),
    ("metrics:\n  listen: 0.0.0.0:0\n", 2, "metrics.listen", "outside 1..65535"),
    ("metrics:\n  listen: '::1:9464'\n", 2, "metrics.listen", "in brackets"),
    ("metrics:\n  listen: '[nope]:9464'\n", 2, "metrics.listen", "no IPv6 address"),
    ("metrics:\n  listen: 'a b:9464'\n", 2, "metrics.listen", "neither an address nor a host name"),
    ("\nmetrics:\n  textfile: /var/lib/node_exporter/kioskd.txt\n", 3, "metrics.textfile", "must end in .prom"),
    ("metrics:\n  textfile_interval_s: 0\n", 2, "metrics.textfile_interval_s", "between 1 and 3600"),
    ("metrics:\n  listne: 0.0.0.0:9464\n", 2, "metrics.listne", "did you mean metrics.listen?"),
])
def test_metrics_config_errors_name_file_line_and_key(text: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "kioskd.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("kioskd.yaml", line, key), str(err)
    assert fragment in str(err)


# ---------------------------------------------------------------------------------------------------- dashboard


def every_metric_name() -> set[str]:
    """Every sample name the registry exports (histogram _bucket/_sum/_count included), with every series made
    to exist first."""
    sink = PrometheusSink(models=lambda: [Lifecycle("gpt-realtime", {"shutdown_date": "2026-03-24"})])
    sink.note(done(usage=REALTIME_USAGE, cost_usd=0.01, underruns=1))
    sink.expect_arms(TurnSettings(fallback=ModelArm("chat", "gpt-audio-1.5", None)))
    return {s.name for family in sink.registry.collect() for s in family.samples}


def test_the_grafana_dashboard_queries_only_metrics_kioskd_exports() -> None:
    path = REPO / "docs" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    assert dashboard["title"] and isinstance(dashboard["panels"], list)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= variables
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    exported = every_metric_name()
    queried = {name for expr in exprs for name in re.findall(r"\bkioskd_[a-z_]+", expr)}
    assert queried and not queried - exported, f"queried but not exported: {sorted(queried - exported)}"
    for expr in exprs:  # every query is scoped to the chosen exhibits
        assert all(f'{var}=~"${var}"' in expr for var in ("job", "instance")), expr
    issue_names = {"kioskd_turns_total", "kioskd_release_to_first_sound_seconds_bucket", "kioskd_underruns_total",
                   "kioskd_refused_presses_total", "kioskd_reconnects_total", "kioskd_faults_total",
                   "kioskd_cost_usd_total", "kioskd_tokens_total", "kioskd_connected",
                   "kioskd_model_shutdown_timestamp_seconds"}
    assert issue_names <= queried


# ---------------------------------------------------------------------------------------------------- kioskd run


def scrape(port: int) -> dict[str, Any]:
    return families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def sample(parsed: dict[str, Any], family: str, **labels: str) -> float | None:
    for s in parsed[family].samples if family in parsed else []:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_kioskd_run_serves_its_turns_and_writes_the_textfile(tmp_path: Path) -> None:
    """The daemon wires the sink: a real `kioskd run` (embedded simulator, null sinks), scraped while it serves
    (phase, connected, a too-short tap's turn), and its textfile holds the final counts after the stop."""
    port = free_port()
    textfile = tmp_path / "kioskd.prom"
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}log:\n  format: json\n"
                                    f"metrics:\n  listen: 127.0.0.1:{port}\n  textfile: {textfile}\n")
    try:
        kiosk.wait_ready(timeout_s=30 * UNIT_S)
        wait_for(lambda: sample(scrape(port), "kioskd_connected") == 1, "kioskd_connected 1", 10 * UNIT_S)
        parsed = scrape(port)
        assert sample(parsed, "kioskd_phase", phase="idle") == 1
        assert sample(parsed, "kioskd_turns", outcome="failed", backend="chat", model="gpt-audio-1.5") == 0
        kiosk.ctl("press")
        kiosk.ctl("release")
        wait_for(lambda: bool(kiosk.events("turn.done")), "the tap's turn.done", 10 * UNIT_S)
        wait_for(lambda: sample(scrape(port), "kioskd_turns", outcome="too_short", backend="realtime") == 1,
                 "the turn counted", 5 * UNIT_S)
        assert kiosk.events("metrics.listening")
    finally:
        code = kiosk.stop()
    assert code == 0, kiosk.tail()
    final = families(textfile.read_text())
    assert sample(final, "kioskd_turns", outcome="too_short", backend="realtime", model="gpt-realtime") == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")


def test_kioskd_waiting_for_a_device_says_so_to_prometheus(tmp_path: Path) -> None:
    """In standby (a device missing) the listener serves too: kioskd_phase{phase="device_missing"} is 1, what
    a fleet's alert looks for."""
    port = free_port()
    kiosk = KioskdProcess(tmp_path, "audio:\n  input_device: no such microphone\n  output_device: kiosk_speaker\n"
                                    "  device_poll_s: 600\nlog:\n  format: json\n"
                                    f"metrics:\n  listen: 127.0.0.1:{port}\n")
    try:
        wait_for(lambda: bool(kiosk.events("audio.device_missing")), "audio.device_missing", 20 * UNIT_S)
        deadline = time.monotonic() + 10 * UNIT_S
        while True:
            try:
                parsed = scrape(port)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert sample(parsed, "kioskd_phase", phase="device_missing") == 1
        assert sample(parsed, "kioskd_connected") == 0
    finally:
        code = kiosk.stop()
    assert code == 0, kiosk.tail()
