"""Prometheus metrics: a sink for the core's notes (``PrometheusSink``) and their exposition (``serving``): /metrics
over HTTP on ``metrics.listen``, and a node_exporter textfile on ``metrics.textfile``. docs/metrics.md lists every
metric, its labels and the note that feeds it.

Theory of operation.

- **A sink like the others** (``metrics.Sink``): the executor hands it every ``Note`` on the event loop, and
  ``note()`` only bumps prometheus_client counters (a few µs: ``benchmarks/metrics_overhead.py``). It lives as long
  as the process, so nothing counted dies with a machine a kioskd bug replaced. Its ``CollectorRegistry`` is its
  own, never the library's global one: what is exported is exactly what is listed here.
- **Label values are bounded**: each label takes values from a fixed set (outcomes, refusal reasons, phases, token
  kinds, backends), or the first few distinct names it sees (models: those the config names; fault causes: an
  exception's class name) and ``other`` after that. Free text from a server never becomes a label, so a flood of
  distinct errors cannot grow the series without bound.
- **What is read, not counted**: the model lifecycle's shutdown dates are read at scrape time from the daemon's
  ``ModelLifecycle`` states (a custom collector), and kioskd's own process figures (CPU, memory, descriptors) come
  from the library's ``ProcessCollector`` under the ``kioskd_`` prefix (never clashing with node_exporter's own
  ``process_*`` when the textfile is merged into its output).
- **Threads**: the event loop never renders a scrape. HTTP is the library's WSGI app (``make_wsgi_app``) served by
  the standard library's threading WSGI server, as ``prometheus_client.start_http_server`` does, with two bounds
  added: at most ``MAX_SCRAPES`` requests at once (one more is closed at once, no thread started) and
  ``SCRAPE_TIMEOUT_S`` per connection (a client that sends nothing is dropped), so a LAN client cannot pile up
  threads against the unit's ``TasksMax``. One accepting thread, one short thread per scrape. The textfile is
  rendered and written in a worker thread (``asyncio.to_thread``) by a task ``serving`` owns.
- **Failures never stop the kiosk**: a port that cannot be bound is ``metrics.listen_failed`` (the kiosk serves
  visitors without it), a textfile that cannot be written ``metrics.textfile_failed`` (once until a write works).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, timezone
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector,
                               disable_created_metrics, generate_latest, make_wsgi_app)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kioskd import __version__
from kioskd import log as log_mod
from kioskd.config import MetricsConfig, listen_address
from kioskd.core.events import Note
from kioskd.core.kiosk import Phase
from kioskd.core.settings import TurnSettings
from kioskd.core.turnlog import OUTCOMES

OTHER: Final = "other"
#: release → first sound: a Realtime answer is a few hundred ms, the Chat Completions fallback a second or more,
#: and ``turn.reply_wait_s`` (10 s by default) ends a turn that hears nothing
LATENCY_BUCKETS_S: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TOKEN_KINDS: Final = ("text_in", "audio_in", "cached_in", "text_out", "audio_out")
BACKENDS: Final = ("realtime", "chat")
#: ``turn.rejected``'s reasons: the link's phases a press cannot be answered in, a press flood, the day's budget
REASONS: Final = ("connecting", "offline", "fault", "press_flood", "budget")
#: the public phases, and the daemon's own before the core runs and while a device is missing
PHASES: Final = (*(p.value for p in Phase), "starting", "device_missing")
#: the public phases that say the Realtime link is not ready
LINK_DOWN_PHASES: Final = frozenset({Phase.CONNECTING.value, Phase.OFFLINE.value, Phase.FAULT.value})
#: fault causes kioskd names itself; the others are ``ws.fault``'s exception class names
CAUSES: Final = ("device_lost", "bug_limit")
CAUSES_MAX: Final = 16
#: models: the arms the config names, then a few more by name
MODELS_MAX: Final = 8
MAX_SCRAPES: Final = 4
SCRAPE_TIMEOUT_S: Final = 10.0

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MODEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class LabelValues:
    """A label's values: ``known`` always pass; then up to ``more`` distinct values matching ``pattern``; anything
    else is ``OTHER``."""

    def __init__(self, known: Iterable[str] = (), more: int = 0, pattern: re.Pattern[str] = _NAME) -> None:
        self._seen = dict.fromkeys(known)
        self._limit = len(self._seen) + more
        self._pattern = pattern

    def __call__(self, value: object) -> str:
        text = value if isinstance(value, str) else ""
        if text in self._seen:
            return text
        if len(self._seen) < self._limit and self._pattern.fullmatch(text):
            self._seen[text] = None
            return text
        return OTHER

    def add(self, value: str) -> None:
        """Let ``value`` pass from now on (within the bound)."""
        self(value)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _number(value: object) -> float | None:
    """A finite non-negative number, else None (a field cut to text, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _get(obj: object, *path: str) -> int:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return _count(obj)


def token_kinds(usage: object) -> dict[str, int]:
    """A turn's tokens by kind (``TOKEN_KINDS``), from the usage of either backend: Realtime's
    (``input_token_details``/``output_token_details``) or Chat Completions' (``prompt_tokens``/
    ``completion_tokens`` and their ``*_details``). The kinds are disjoint (``text_in`` and ``audio_in`` leave the
    cached input out, which is ``cached_in``), so they add up to every token billed, split as ``core/cost.py``
    prices them. Missing or malformed fields count as zero; anything but a mapping is no tokens."""
    if not isinstance(usage, Mapping):
        return {}
    if any(k in usage for k in ("prompt_tokens", "completion_tokens", "prompt_tokens_details",
                                "completion_tokens_details")):
        prompt, completion = _get(usage, "prompt_tokens"), _get(usage, "completion_tokens")
        audio_in = min(_get(usage, "prompt_tokens_details", "audio_tokens"), prompt)
        audio_out = min(_get(usage, "completion_tokens_details", "audio_tokens"), completion)
        cached = min(_get(usage, "prompt_tokens_details", "cached_tokens"), prompt)
        cached_audio = min(cached, audio_in)  # the cached share, audio first (as core/cost.py bills it)
        cached_text = min(cached - cached_audio, prompt - audio_in)
        kinds = {"text_in": prompt - audio_in - cached_text, "audio_in": audio_in - cached_audio,
                 "cached_in": cached_text + cached_audio, "text_out": completion - audio_out, "audio_out": audio_out}
    else:
        text_in = _get(usage, "input_token_details", "text_tokens")
        audio_in = _get(usage, "input_token_details", "audio_tokens")
        cached_text = min(_get(usage, "input_token_details", "cached_tokens_details", "text_tokens"), text_in)
        cached_audio = min(_get(usage, "input_token_details", "cached_tokens_details", "audio_tokens"), audio_in)
        kinds = {"text_in": text_in - cached_text, "audio_in": audio_in - cached_audio,
                 "cached_in": cached_text + cached_audio,
                 "text_out": _get(usage, "output_token_details", "text_tokens"),
                 "audio_out": _get(usage, "output_token_details", "audio_tokens")}
    return {kind: n for kind, n in kinds.items() if n > 0}


def shutdown_timestamp(value: object) -> float | None:
    """A model's ``shutdown_date`` (``2026-03-24``, perhaps with a time after it) as Unix seconds at the start of
    that day, UTC; None when there is none or it is no date."""
    if not isinstance(value, str):
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


class _ModelShutdown(Collector):
    """``kioskd_model_shutdown_timestamp_seconds{model}``, read at scrape time from the model lifecycle's states
    (objects with ``model`` and a ``state`` dict); a model with no shutdown date has no sample."""

    NAME: Final = "kioskd_model_shutdown_timestamp_seconds"
    HELP: Final = "When the service will shut the model down (the model lifecycle's shutdown_date, UTC midnight)"

    def __init__(self, models: Callable[[], Iterable[Any]]) -> None:
        self._models = models
        self._names = LabelValues(more=MODELS_MAX, pattern=_MODEL)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["model"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["model"])
        for lifecycle in list(self._models()):
            state = getattr(lifecycle, "state", None)
            at_s = shutdown_timestamp(state.get("shutdown_date") if isinstance(state, dict) else None)
            if at_s is not None:
                family.add_metric([self._names(getattr(lifecycle, "model", ""))], at_s)
        yield family


class PrometheusSink:
    """The core's notes as Prometheus metrics, in ``registry`` (its own). ``models``: the model lifecycles, read
    at scrape time. Loop thread only, apart from the registry's reads (prometheus_client's values are locked)."""

    def __init__(self, *, models: Callable[[], Iterable[Any]] = lambda: ()) -> None:
        # no *_created series beside each counter and histogram: half the series, nothing kioskd needs lost
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._outcome = LabelValues(OUTCOMES)
        self._reason = LabelValues(REASONS)
        self._cause = LabelValues(CAUSES, more=CAUSES_MAX - len(CAUSES))
        self._backend = LabelValues(BACKENDS)
        self._model = LabelValues(more=MODELS_MAX, pattern=_MODEL)
        arm = ["backend", "model"]
        self.turns = Counter("kioskd_turns", "Visitors' turns, by how they ended (turn.done)",
                             ["outcome", *arm], registry=registry)
        self.release_to_first_sound = Histogram(
            "kioskd_release_to_first_sound_seconds", "From the button's release to the reply's first sound "
            "(turn.done, the turns that played)", arm, buckets=LATENCY_BUCKETS_S, registry=registry)
        self.underruns = Counter("kioskd_underruns", "Gaps heard in replies: the playout buffer ran dry while a "
                                 "reply played (turn.done's underruns)", registry=registry)
        self.refused = Counter("kioskd_refused_presses", "Presses no backend could answer, or refused (a flood, "
                               "the day's budget): not turns (turn.rejected)", ["reason"], registry=registry)
        self.reconnects = Counter("kioskd_reconnects", "Realtime sessions lost or failed to come up, retried after "
                                  "a backoff (ws.disconnected, ws.connect_timeout)", registry=registry)
        self.faults = Counter("kioskd_faults", "Faults a technician may have to fix: ws.fault by its error_type, "
                              "a lost audio device, the kioskd bug limit", ["cause"], registry=registry)
        self.cost = Counter("kioskd_cost_usd", "What the turns cost, in US dollars (turn.done's cost_usd)", arm,
                            registry=registry)
        self.tokens = Counter("kioskd_tokens", "Tokens billed, by kind; the kinds are disjoint (turn.done's usage)",
                              ["kind"], registry=registry)
        self.connected = Gauge("kioskd_connected", "1 while the Realtime session is ready (ws.ready), else 0",
                               registry=registry)
        self.phase_gauge = Gauge("kioskd_phase", "1 for the kiosk's public phase (turn.phase), 0 for the others",
                                 ["phase"], registry=registry)
        Info("kioskd_build", "kioskd's version", registry=registry).info({"version": __version__})
        ProcessCollector(namespace="kioskd", registry=registry)
        registry.register(_ModelShutdown(models))
        for reason in REASONS:  # each fixed label value exported at 0 from the start: increase() sees the first
            self.refused.labels(reason)
        for cause in CAUSES:
            self.faults.labels(cause)
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind)
        self._phase = "starting"
        for phase in PHASES:
            self.phase_gauge.labels(phase).set(1 if phase == self._phase else 0)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "turn.done": self._turn_done, "turn.rejected": self._rejected, "turn.phase": self._phase_changed,
            "ws.ready": lambda f: self.connected.set(1), "ws.recycle": lambda f: self.connected.set(0),
            "ws.disconnected": self._reconnect, "ws.connect_timeout": self._reconnect, "ws.fault": self._ws_fault,
            "daemon.bug_limit": lambda f: self.fault("bug_limit"),
        }

    def expect_arms(self, turn: TurnSettings) -> None:
        """Export every arm the config names (the Realtime model, its degrade, the fallback, an A/B arm) from the
        start, each outcome at 0, so the first turn of each is seen by ``increase()``."""
        for arm in (turn.main, turn.degrade, turn.fallback, turn.ab_arm):
            if arm is None:
                continue
            self._model.add(arm.model)
            backend, model = self._backend(arm.backend), self._model(arm.model)
            for outcome in OUTCOMES:
                self.turns.labels(outcome, backend, model)
            self.release_to_first_sound.labels(backend, model)
            self.cost.labels(backend, model)

    def note(self, note: Note) -> None:
        handler = self._handlers.get(note.name)
        if handler is not None:
            handler(note.fields)

    def fault(self, cause: str) -> None:
        """A fault kioskd names itself (``CAUSES``), or an exception's class name."""
        self.faults.labels(self._cause(cause)).inc()

    def set_phase(self, phase: str) -> None:
        """The public phase (``PHASES``; any other counts as none of them)."""
        if phase == self._phase:
            return
        if self._phase in PHASES:
            self.phase_gauge.labels(self._phase).set(0)
        self._phase = phase
        if phase in PHASES:
            self.phase_gauge.labels(phase).set(1)

    def _turn_done(self, f: Mapping[str, Any]) -> None:
        backend, model = self._backend(f.get("backend", "realtime")), self._model(f.get("model"))
        self.turns.labels(self._outcome(f.get("outcome")), backend, model).inc()
        sound_ms = _number(f.get("release_to_first_sound_ms"))
        if sound_ms is not None:
            self.release_to_first_sound.labels(backend, model).observe(sound_ms / 1000)
        underruns = _count(f.get("underruns"))
        if underruns:
            self.underruns.inc(underruns)
        cost = _number(f.get("cost_usd"))
        if cost:
            self.cost.labels(backend, model).inc(cost)
        for kind, n in token_kinds(f.get("usage")).items():
            self.tokens.labels(kind).inc(n)

    def _rejected(self, f: Mapping[str, Any]) -> None:
        self.refused.labels(self._reason(f.get("reason"))).inc()

    def _phase_changed(self, f: Mapping[str, Any]) -> None:
        phase = f.get("to")
        if isinstance(phase, str):
            self.set_phase(phase)
            if phase in LINK_DOWN_PHASES:
                self.connected.set(0)

    def _reconnect(self, f: Mapping[str, Any]) -> None:
        self.reconnects.inc()
        self.connected.set(0)

    def _ws_fault(self, f: Mapping[str, Any]) -> None:
        self.fault(f.get("error_type") or "")
        self.connected.set(0)


# ---------------------------------------------------------------------------------------------------- exposition


class _Handler(WSGIRequestHandler):
    #: applied to the connection (StreamRequestHandler.setup): reading the request and writing the answer
    timeout = SCRAPE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # a line per scrape would fill the journal


class MetricsServer(ThreadingMixIn, WSGIServer):
    """``registry``'s /metrics (prometheus_client's WSGI app) on ``host:port``, served from a thread it starts (as
    ``prometheus_client.start_http_server``), at most ``max_scrapes`` requests at once. Binding (and the host
    name lookup the standard library's HTTP server makes) blocks: construct it in a worker thread. Raises OSError
    when it cannot listen."""

    daemon_threads = True  # a scrape under way never holds up the stop

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *, max_scrapes: int = MAX_SCRAPES,
                 timeout_s: float = SCRAPE_TIMEOUT_S, log: log_mod.Logger | None = None) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_scrapes)
        self._log = log or log_mod.get_logger("kioskd.metrics")
        self.refused = 0  # connections closed at once: max_scrapes were under way
        super().__init__((str(sockaddr[0]), port), type("_Handler", (_Handler,), {"timeout": timeout_s}))
        self.set_app(make_wsgi_app(registry))
        self._thread = threading.Thread(target=self.serve_forever, name="kioskd-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the request's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that timed out or went away: its business
            return
        self._log.warning("metrics.scrape_failed", **log_mod.error_fields(exc or RuntimeError("unknown")))

    def close(self) -> None:
        """Stop serving (blocks up to the serving loop's 0.5 s poll): call from a worker thread."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5.0)


class Textfile:
    """The registry rendered (prometheus_client's exposition) to ``path`` for node_exporter's textfile collector:
    a temporary file beside it (``.prom.tmp``, which the collector ignores), then a rename, so the collector never
    reads half a file. Mode 0644 whatever the umask (the unit's is 0077, and node_exporter runs as another user);
    no fsync: the file is rewritten within the interval, and an SD card is spared the flushes."""

    def __init__(self, path: str, registry: CollectorRegistry, log: log_mod.Logger | None = None) -> None:
        self.path = path
        self._registry = registry
        self._log = log or log_mod.get_logger("kioskd.metrics")
        self._failed = False

    def write(self) -> None:
        """Render and write now (blocking: from a worker thread); a failure is said once until a write works."""
        tmp = f"{self.path}.tmp"
        try:
            data = generate_latest(self._registry)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if not self._failed:
                self._failed = True
                self._log.warning("metrics.textfile_failed", file=self.path, **log_mod.error_fields(exc))
            return
        self._failed = False

    async def run(self, interval_s: float) -> None:
        """Write now and every ``interval_s``, off the event loop; cancel to stop."""
        while True:
            await asyncio.to_thread(self.write)
            await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def serving(sink: PrometheusSink, cfg: MetricsConfig, log: log_mod.Logger | None = None
                  ) -> AsyncIterator[MetricsServer | None]:
    """Expose ``sink``'s registry as ``cfg`` says while the block runs: the HTTP listener (yielded; None when off
    or it could not listen) and the textfile writer (a task owned here, cancelled and awaited at the end, then one
    last write with the final counts)."""
    log = log or log_mod.get_logger("kioskd.metrics")
    server: MetricsServer | None = None
    if cfg.listen is not None:
        host, port = listen_address(cfg.listen)
        try:
            server = await asyncio.to_thread(MetricsServer, host, port, sink.registry, log=log)
        except OSError as exc:
            log.error("metrics.listen_failed", listen=cfg.listen, **log_mod.error_fields(exc))
        else:
            log.info("metrics.listening", listen=cfg.listen, port=server.port)
    textfile = Textfile(cfg.textfile, sink.registry, log) if cfg.textfile is not None else None
    writer = asyncio.create_task(textfile.run(cfg.textfile_interval_s), name="metrics-textfile") \
        if textfile is not None else None
    try:
        yield server
    finally:
        if writer is not None and textfile is not None:
            writer.cancel()
            await asyncio.wait([writer])
            await asyncio.to_thread(textfile.write)
        if server is not None:
            await asyncio.to_thread(server.close)
