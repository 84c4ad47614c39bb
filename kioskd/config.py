"""The only YAML reader: a config file becomes one frozen, typed ``KioskConfig``, built once.

Theory: the dataclass defaults below *are* the embedded default (embedded simulator on loopback, simulated
button), and ``config/kioskd.yaml`` spells the same values out with comments; a test keeps the two equal. The
file is read with ``yaml.compose`` so that every value keeps its node and its line: each ``ConfigError`` names
the file, the 1-based line, the dotted key and the problem, and unknown names come with the closest valid one.
Several files (a fleet's shared base, then an exhibit's overlay) are each validated on their own, relative paths
taken from the file that sets them, then merged: mappings deeply, the later file winning, lists replaced whole;
``KioskConfig.where`` names the file and line that set a key.
Units are in the key names; ``None`` (YAML ``null``) means off or "pick for me". The YAML names a key *file*,
never a key: ``read_api_key`` reads it later, and no message ever includes it.

Everything here is synchronous and side-effect free apart from reading the named files and creating the
last-resort control socket directory (``private_dir``); call it from any thread (the daemon reads at start and on
reload, before touching the running config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import os
import stat
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, Union, get_args, get_origin, get_type_hints
from urllib.parse import parse_qsl, urlsplit

import yaml  # type: ignore[import-untyped]

from kioskd.errors import ConfigError
from kioskd.core.realtime import INSTRUCTIONS_MAX_BYTES
from kioskd.core import guide
from kioskd.core.cost import DEFAULT_PRICES, Prices, prices_for
from kioskd.core.settings import LinkSettings, UplinkFormat, ModelArm, Settings, ToolSpec, TurnSettings

Auth = Literal["auto", "bearer", "api-key"]
Transport = Literal["websocket", "webrtc"]
ButtonKind = Literal["gpio", "simulated"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]
SimVoice = Literal["speech", "tone"]

DEFAULT_SOURCE: Final = "(embedded default)"
CREDENTIAL_NAME: Final = "openai_api_key"
API_KEY_ENV: Final = "OPENAI_API_KEY"
AZURE_HOST_SUFFIX: Final = ".openai.azure.com"
#: sun_path is 108 bytes on Linux, one of them the terminating NUL
MAX_SOCKET_PATH_BYTES: Final = 107
#: the config file is read whole (off the event loop on reload); ten times the commented default is plenty
CONFIG_MAX_BYTES: Final = 256 * 1024
#: a key is ~200 characters; the file holds only the key
KEY_FILE_MAX_BYTES: Final = 4096


_LINK: Final = LinkSettings()
_TURN: Final = TurnSettings()


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    url: str | None = None
    """ws:// or wss:// Realtime endpoint; None: the embedded simulator on loopback."""
    auth: Auth = "auto"
    """auto: ``api-key`` header for *.openai.azure.com, else ``Authorization: Bearer``."""
    api_key_file: str | None = None
    """File holding the key (mode 600); None: $CREDENTIALS_DIRECTORY/openai_api_key, else $OPENAI_API_KEY."""
    voice: str = "marin"
    instructions: str = (
        "You are the voice of a museum exhibit. Answer visitors' questions in one or two short sentences."
    )
    connect_timeout_s: float = _LINK.connect_timeout_s
    """From opening the socket to ``session.updated``."""
    recycle_margin_s: float = _LINK.recycle_margin_s
    """Renew the session this long before the server's ``expires_at`` (only between visitors)."""
    backoff_first_max_s: float = _LINK.backoff_first_max_s
    """The first reconnect waits a random time below this (a fleet does not come back in lock-step)."""
    backoff_cap_s: float = _LINK.backoff_cap_s
    """Reconnect delays double up to this."""
    healthy_after_s: float = _LINK.healthy_after_s
    """A session up this long resets the reconnect delays."""
    fault_retry_s: float = _LINK.fault_retry_s
    """In FAULT (bad key, no quota, unknown model) try again after this long, or at once on reload."""
    quick_failure_s: float = _LINK.quick_failure_s
    """A session that dies this soon after it was ready, before serving any response, is a quick failure ..."""
    quick_failures_fatal: int = _LINK.quick_failures_fatal
    """... and this many in a row mean the endpoint or config is broken, not the network (FAULT)."""
    allow_plaintext: bool = False
    """Let the key go over ws:// to a host other than loopback (a test link between network namespaces). Never
    on a museum floor: the key would cross the network unencrypted. Logged as a warning when used."""
    keepalive_s: float = 20.0
    """A ping this often; a link that answers none within the same time is lost (a silent dead peer: Wi-Fi gone
    without a TCP reset), so the worst case to notice is twice this."""
    transport: Transport = "websocket"
    """websocket (events and audio over one TCP connection) or webrtc (events on a data channel, audio as Opus
    RTP over UDP; the optional ``kioskd[webrtc]`` extra). docs/performance.md compares them on a lossy link."""


@dataclass(frozen=True, slots=True)
class AudioConfig:
    input_device: str | None = None
    """Device name or substring; None: the system default."""
    output_device: str | None = None
    block_ms: int = 5
    """PortAudio block (callback period) of the speaker; the microphone keeps 20 ms blocks."""
    latency_s: float = 0.015
    """Suggested PortAudio latency for both streams. The output queue plays after a barge-in press and delays every
    reply's start, so it is short: 15 ms is three 5 ms periods, two of headroom for a late callback (GIL, GC). On a
    Pi Zero 2 W or under load, raise it to 0.03 (and block_ms to 10) if the log shows audio.latency_raised: kioskd
    doubles it by itself (up to 0.1 s) after repeated gaps, for the rest of the run."""
    prebuffer_ms: float = 30.0
    """The jitter buffer's first target: how long reply audio waits before the speaker starts, until the measured
    delivery jitter and underruns move it (always within prebuffer_min_ms..prebuffer_max_ms)."""
    prebuffer_min_ms: float = 10.0
    """The smallest target the jitter buffer shrinks to on a calm link."""
    prebuffer_max_ms: float = 400.0
    """The largest target it grows to after late audio and underruns."""
    preroll_ms: int = 200
    """Audio from just before the press sent first, so a visitor who speaks as they press is not clipped."""
    earcons: bool = True
    input_format: UplinkFormat = _LINK.input_format
    """The question on the wire: pcm16 (24 kHz PCM16) or pcmu (8 kHz G.711 µ-law, a sixth of the bytes); a change
    renews the session between visitors."""
    narrow_backlog_ms: int = _LINK.narrow_backlog_ms
    """``auto``: a question this far behind on the uplink at release (ms of its audio not yet delivered)
    narrows the session to pcmu."""
    device_poll_s: float = 5.0
    """While a device is missing, how often kioskd looks for it (a short child process each time); within one
    outage the looks slow down, doubling up to a minute."""


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    kind: ButtonKind = "simulated"
    """gpio: a real push button; simulated: driven only through kioskctl press/release."""
    pin: int = 17
    """BCM pin number, wired to ground (internal pull-up)."""


@dataclass(frozen=True, slots=True)
class LedConfig:
    pin: int | None = 27
    """BCM pin number; None: no LED."""
    pwm: bool = True
    """Pulse (PWM) instead of blink."""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: str | None = None
    """Unix socket path; None: see ``control_socket_path``."""


@dataclass(frozen=True, slots=True)
class TurnConfig:
    min_hold_ms: int = _TURN.min_hold_ms
    """Held audio below this is dropped, never committed."""
    hold_cap_s: float = _TURN.hold_cap_s
    reply_wait_s: float = _TURN.reply_wait_s
    """From commit to the first reply audio."""
    reply_cap_s: float = _TURN.reply_cap_s
    """The longest reply that plays (then it is cut, outcome capped). The speaker's playout buffer is sized for it
    at start (90 s at 48 kHz: 8.8 MB), so a longer cap set by a reload applies fully only after a restart."""
    rearm_ms: int = _TURN.rearm_ms
    """A press this soon after a release is a bounce."""
    append_ms: int = _TURN.append_ms
    """Microphone audio is sent in chunks of at least this much."""
    thinking_cue_s: float = _TURN.thinking_cue_s
    """No reply audio this long after release: a soft "still thinking" sound (with audio.earcons)."""
    usage_wait_s: float = _TURN.usage_wait_s
    """How long an ended turn waits for the usage of a reply it cancelled before turn.done says it is missing."""
    max_reply_tokens: int | None = None
    """The most one reply may produce (the session's max_output_tokens: audio ~20 tokens a second); None: the
    service's default."""


@dataclass(frozen=True, slots=True)
class ExhibitConfig:
    name: str | None = None
    """The exhibit's name, as the guide may say it; None: not said."""
    language: str = "auto"
    """The answer language (a name such as English or Deutsch); auto: the language the visitor speaks."""
    instructions: str | None = None
    """The guide's persona; None: realtime.instructions (where it was before this section existed)."""
    knowledge_file: str | None = None
    """The curator's entries (YAML list of topic / text / keywords): the guide answers facts from them alone."""
    tools_file: str | None = None
    """More tools (YAML list): opening_hours, and http tools that POST to the museum's own systems."""


@dataclass(frozen=True, slots=True)
class ConversationConfig:
    new_visitor_after_s: float = _TURN.new_visitor_after_s
    """After this much quiet the next press starts a fresh conversation: nothing of an earlier visitor reaches
    the model. Counted from the end of the last reply (or the last release if nothing played)."""
    context_tokens: int = 4000
    """The conversation kept after the instructions, in tokens: the server drops the oldest turns past this."""


@dataclass(frozen=True, slots=True)
class PromptsConfig:
    offline: str | None = "default"
    """A WAV file said when a press cannot be answered (no connection); default: the English recording that
    ships with kioskd; None (or a file that cannot be used): the offline tone."""
    apology: str | None = "default"
    """A WAV file said when a turn fails; default, None: as above, with the apology tone."""
    closed: str | None = "default"
    """A WAV file said when the budget is spent ("please come back later"); default, None: as above."""


@dataclass(frozen=True, slots=True)
class CostConfig:
    model: str | None = None
    """The model the Realtime endpoint runs, for its prices; None: the ``model=`` of realtime.url (an Azure URL
    names a deployment, so set it there)."""
    prices: Mapping[str, Prices] | None = None
    """Prices per model (USD per 1M tokens: text_in, text_out, audio_in, audio_out, and text_cached /
    audio_cached where the model has them) that replace or add to the built-in table."""
    daily_budget_usd: float | None = None
    """Once today's answers cost this much, presses get the spoken "come back later" and nothing is sent until
    local midnight; None: no budget."""
    degrade_model: str | None = None
    """A cheaper Realtime model new visitors get from ``degrade_at`` of the budget (priced; on Azure, the
    deployment's name); None: never."""
    degrade_at: float = 0.8
    """The share of daily_budget_usd from which new visitors get degrade_model."""


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    url: str | None = None
    """A Chat Completions base URL (https://api.openai.com/v1, or an Azure deployment's
    https://<resource>.openai.azure.com/openai/deployments/<name>?api-version=...): a visitor who presses while
    the Realtime link is down is answered through it; None: no fallback (the offline prompt), unless the embedded
    simulator runs (realtime.url None) with simulator.fallback."""
    model: str = "gpt-audio-1.5"
    """The Chat Completions audio model (priced like the Realtime one; named in turn.done)."""
    api_key_file: str | None = None
    """A file holding the fallback's key; None: the Realtime key."""
    auth: Auth | None = None
    """bearer | api-key | auto; None: as realtime.auth."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    """The longest wait for the next bytes of a reply: a stalled stream ends the turn with the apology."""


@dataclass(frozen=True, slots=True)
class AbConfig:
    split: float = 0.0
    """The share of new visitors (0..1) answered by ``arm`` instead of the Realtime model, for a whole visit."""
    arm: str = "fallback"
    """The second arm: fallback (Chat Completions with fallback.model), or a Realtime model (gpt-realtime-mini)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str | None = None
    """HOST:PORT to serve Prometheus metrics on (/metrics, no authentication): the LAN interface the monitoring
    scrapes, chosen on purpose; None: no HTTP listener."""
    textfile: str | None = None
    """A ``.prom`` file for node_exporter's textfile collector, rewritten atomically every textfile_interval_s and
    at stop (for fleets that scrape only node_exporter); None: none."""
    textfile_interval_s: float = 30.0
    """How often the textfile is rewritten."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"
    """auto: console on a TTY, JSON lines otherwise."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    first_delta_delay_ms: float = 300.0
    """The embedded simulator's delay from response.create to the first audio delta."""
    jitter_ms: float = 20.0
    voice: SimVoice = "speech"
    tool_call: str | None = None
    """The simulated model calls this tool (when the session declares it) for each new question; None: never."""
    preamble_ms: int = 0
    """What the simulated model says before such a call ("Let me check"), in ms of its reply voice."""
    fallback: bool = True
    """With realtime.url None and no fallback.url: an embedded Chat Completions simulator is the fallback."""
    first_audio_delay_ms: float = 600.0
    """The embedded Chat Completions simulator's delay from the request to the first audio chunk."""


@dataclass(frozen=True, slots=True)
class KioskConfig:
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    led: LedConfig = field(default_factory=LedConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    exhibit: ExhibitConfig = field(default_factory=ExhibitConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    ab: AbConfig = field(default_factory=AbConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    source: str = DEFAULT_SOURCE
    """Where this config came from: the file path (several: ``"base.yaml + exhibit.yaml"``), or DEFAULT_SOURCE."""
    lines: Mapping[str, int] = field(default_factory=dict, compare=False)
    """The line of each key set in the file (``"realtime.url"``: 3), for errors found after parsing."""
    files: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The file whose line that is, for each key in ``lines`` (the last of several files that set it)."""

    def where(self, key: str) -> tuple[str, int | None]:
        """The file and line that set ``key``, for a ConfigError; a key no file sets: the source, no line."""
        return self.files.get(key, self.source), self.lines.get(key)


# ---------------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True)
class _Spec:
    """What one key accepts, derived from the dataclass annotation."""

    kind: type  # str, int, float or bool
    optional: bool
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        else:
            text = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[self.kind]
        return f"{text} or null" if self.optional else text


def _spec_of(hint: Any) -> _Spec:
    args = get_args(hint)
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if get_origin(hint) is Literal:
        return _Spec(str, optional, tuple(get_args(hint)))
    return _Spec(hint, optional)


SECTIONS: Final[dict[str, type]] = {
    name: hint for name, hint in get_type_hints(KioskConfig).items() if name not in ("source", "lines", "files")
}
SCHEMA: Final[dict[str, dict[str, _Spec]]] = {
    name: {key: _spec_of(hint) for key, hint in get_type_hints(cls).items()} for name, cls in SECTIONS.items()
}


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _between(low: int, high: int) -> Callable[[float], str | None]:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _instructions_problem(text: str) -> str | None:
    size = len(text.encode())
    if size <= INSTRUCTIONS_MAX_BYTES:
        return None
    return (f"is {size:,} bytes long (UTF-8); the limit is {INSTRUCTIONS_MAX_BYTES:,}: the service echoes them in "
            "every session update, and kioskd reads no frame over 256 KiB")


def _url_problem(url: str, schemes: tuple[str, str], key_file: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        return f"must be a {schemes[0]}:// or {schemes[1]}:// URL"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password or any(k.lower() in ("api-key", "api_key", "key")
                                               for k, _ in parse_qsl(parts.query)):
        return f"carries a credential; put the key in a file named by {key_file}"
    return None


def _socket_problem(path: str) -> str | None:
    if not path.strip():
        return "must not be empty"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        return f"is longer than {MAX_SOCKET_PATH_BYTES} bytes, the limit for a Unix socket path"
    return None


def _key_file_problem(path: str) -> str | None:
    if not path.strip():
        return "must not be empty"
    if path.startswith("sk-") or (len(path) > 40 and "/" not in path):
        return "looks like a key, not a file name; put the key in a file (mode 600) and name the file here"
    return None


def listen_address(text: str) -> tuple[str, int]:
    """``metrics.listen``'s ``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as (host, port). Raises ValueError
    saying what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not port.isascii():
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:9464 or this Pi's LAN address with a port")
    if not 1 <= int(port) <= 65535:
        raise ValueError("has a port outside 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("has no IPv6 address between the brackets") from None
        return host[1:-1], int(port)
    if not host:
        raise ValueError("names no host: 0.0.0.0 for every interface, or the LAN address to listen on")
    if ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::]:9464")
    if not all(c.isascii() and (c.isalnum() or c in ".-") for c in host):
        raise ValueError("has a host that is neither an address nor a host name")
    return host, int(port)


def _listen_problem(text: str) -> str | None:
    try:
        listen_address(text)
    except ValueError as exc:
        return str(exc)
    return None


def _textfile_problem(path: str) -> str | None:
    if not path.strip():
        return "must not be empty"
    if not path.endswith(".prom"):
        return "must end in .prom (node_exporter's textfile collector reads only those)"
    return None


#: value checks beyond the type, by dotted key; each returns the problem (None: fine)
CHECKS: Final[Mapping[str, Callable[[Any], str | None]]] = {
    "realtime.url": lambda url: _url_problem(url, ("ws", "wss"), "realtime.api_key_file"),
    "realtime.api_key_file": _key_file_problem,
    "realtime.voice": _non_empty,
    "realtime.instructions": _instructions_problem,
    "realtime.connect_timeout_s": _positive,
    "realtime.keepalive_s": _positive,
    "audio.narrow_backlog_ms": _positive,
    "realtime.recycle_margin_s": _non_negative,
    "realtime.backoff_first_max_s": _positive,
    "realtime.backoff_cap_s": _positive,
    "realtime.healthy_after_s": _positive,
    "realtime.fault_retry_s": _positive,
    "realtime.quick_failure_s": _non_negative,
    "realtime.quick_failures_fatal": _between(1, 100),
    "audio.block_ms": _between(5, 100),
    "audio.latency_s": _positive,
    "audio.prebuffer_ms": _non_negative,
    "audio.prebuffer_min_ms": _positive,
    "audio.prebuffer_max_ms": _positive,
    "audio.preroll_ms": _between(0, 1000),
    "audio.device_poll_s": _positive,
    "button.pin": _between(0, 27),
    "led.pin": _between(0, 27),
    "control.socket": _socket_problem,
    "turn.min_hold_ms": _non_negative,
    "turn.hold_cap_s": _positive,
    "turn.reply_wait_s": _positive,
    "turn.reply_cap_s": _between(1, 600),  # the playout ring is sized for it: 600 s is 58 MB at 48 kHz
    "turn.rearm_ms": _non_negative,
    "turn.append_ms": _between(5, 200),
    "turn.thinking_cue_s": _positive,
    "turn.usage_wait_s": _non_negative,
    "exhibit.name": _non_empty,
    "exhibit.language": _non_empty,
    "exhibit.instructions": _instructions_problem,
    "conversation.new_visitor_after_s": _positive,
    "conversation.context_tokens": _between(500, 28000),
    "simulator.first_delta_delay_ms": _non_negative,
    "simulator.jitter_ms": _non_negative,
    "simulator.tool_call": _non_empty,
    "cost.model": _non_empty,
    "fallback.url": lambda url: _url_problem(url, ("http", "https"), "fallback.api_key_file"),
    "fallback.model": _non_empty,
    "fallback.api_key_file": _key_file_problem,
    "fallback.connect_timeout_s": _positive,
    "fallback.read_timeout_s": _positive,
    "ab.split": lambda value: None if 0 <= value <= 1 else "must be between 0 and 1",
    "ab.arm": _non_empty,
    "cost.degrade_model": _non_empty,
    "cost.degrade_at": lambda value: None if 0 < value <= 1 else "must be greater than 0 and at most 1",
    "simulator.first_audio_delay_ms": _non_negative,
    "cost.daily_budget_usd": _non_negative,
    "turn.max_reply_tokens": _between(1, 4096),
    "simulator.preamble_ms": _between(0, 5000),
    "metrics.listen": _listen_problem,
    "metrics.textfile": _textfile_problem,
    "metrics.textfile_interval_s": _between(1, 3600),
}
#: path-valued keys: "~" is expanded and relative paths are taken from the config file's directory, because
#: the daemon's working directory is not the technician's (and lgpio chdir()s to $LG_WD)
PATH_KEYS: Final = frozenset({"realtime.api_key_file", "fallback.api_key_file", "control.socket", "exhibit.knowledge_file",
                              "exhibit.tools_file", "prompts.offline", "prompts.apology", "prompts.closed",
                              "metrics.textfile"})


# ---------------------------------------------------------------------------------------------------- reading


#: one config file, or several merged in order
Paths: TypeAlias = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def load(path: Paths) -> KioskConfig:
    """Read and validate a config file, or several merged in order (a shared base, then an exhibit's overlay:
    see ``merge``); ``None`` or no file gives the embedded default. Raises ConfigError naming the file (and line
    and key) where the bad value came from."""
    if path is None:
        return KioskConfig()
    names = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    if not names:
        return KioskConfig()
    return merge([_layer(read_small_text(name, None, "", CONFIG_MAX_BYTES)[0], name) for name in names])


def read_small_text(path: str, key: str | None, what: str, limit_bytes: int) -> tuple[str, int]:
    """A small regular UTF-8 file's text and mode bits; every failure a ConfigError naming ``path`` (and
    ``key``). The descriptor is checked before anything is read: a link to ``/dev/zero`` or a FIFO is refused at
    once (opened non-blocking, so a FIFO never hangs start-up), and at most ``limit_bytes`` are read. ``what``
    names the file in messages ("key file"), or is empty for the config file itself."""
    subject = f"{what} " if what else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(path, None, key, f"{what} not found" if what else "no such file") from None
    except OSError as exc:
        raise ConfigError(path, None, key, f"cannot read {subject}".rstrip() + f": {_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, None, key, f"{subject}is not a regular file but {_file_kind(info.st_mode)}",
                              "name a plain file")
        if info.st_size > limit_bytes:
            raise ConfigError(path, None, key, f"{subject}is {info.st_size:,} bytes; the limit is {limit_bytes:,}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit_bytes:
            chunk = os.read(fd, limit_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(path, None, key, f"cannot read {subject}".rstrip() + f": {_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > limit_bytes:  # it grew while being read
        raise ConfigError(path, None, key, f"{subject}is over the limit of {limit_bytes:,} bytes")
    try:
        return b"".join(chunks).decode("utf-8"), info.st_mode
    except UnicodeDecodeError:
        raise ConfigError(path, None, key, f"{subject}is not UTF-8 text" if what else "not UTF-8 text") from None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def parse(text: str, filename: str) -> KioskConfig:
    """Validate YAML text; ``filename`` names it in errors and anchors relative paths. Raises ConfigError."""
    return merge([_layer(text, filename)])


@dataclass(frozen=True, slots=True)
class Layer:
    """One file's validated values: only the keys it sets (paths already resolved against its directory), and
    their lines."""

    filename: str
    sections: Mapping[str, Mapping[str, Any]]
    lines: Mapping[str, int]


def merge(layers: Sequence[Layer]) -> KioskConfig:
    """The config of several files, later ones winning: a key's value is the last file's that sets it, except
    that two mappings (``cost.prices``) merge, model by model; a list would be replaced whole. Each key's line is
    kept with its file (``KioskConfig.where``). The checks across keys run on the merged result and name the key
    set by the later file. Raises ConfigError."""
    merged: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    files: dict[str, str] = {}
    for layer in layers:
        for name, values in layer.sections.items():
            section = merged.setdefault(name, {})
            for key, value in values.items():
                section[key] = _deep_merge(section.get(key), value)
        lines.update(layer.lines)
        files.update(dict.fromkeys(layer.lines, layer.filename))
    order = [layer.filename for layer in layers]
    cfg = KioskConfig(source=" + ".join(order) if order else DEFAULT_SOURCE, lines=lines, files=files,
                      **{name: SECTIONS[name](**values) for name, values in merged.items()})
    _cross_check(cfg, order)
    return cfg


def _deep_merge(old: Any, new: Any) -> Any:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = dict(old)
        for key, value in new.items():
            out[key] = _deep_merge(out.get(key), value)
        return out
    return new  # a scalar, a list, a record (a model's Prices) or null: replaced whole


def _layer(text: str, filename: str) -> Layer:
    """Validate one file on its own: YAML, section and key names, each value. Raises ConfigError."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable"
        if exc.context and problem.startswith("but "):  # "expected a single document ... but found another"
            problem = f"{exc.context} {problem}"
        raise ConfigError(filename, mark.line + 1 if mark else None, None, f"invalid YAML: {problem}",
                          _syntax_hint(problem)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(filename, None, None, f"invalid YAML: {exc}") from None
    if root is None or _is_null(root):
        return Layer(filename, {}, {})
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(filename, _line(root), None, "expected a mapping of sections at the top level",
                          "sections: " + ", ".join(SECTIONS))
    sections: dict[str, dict[str, Any]] = {}
    for key_node, value_node in _pairs(root, filename, None):
        name = key_node.value
        if name not in SECTIONS:
            raise ConfigError(filename, _line(key_node), _name_shown(name), "unknown section",
                              _suggest(name, list(SECTIONS)))
        sections[name] = _section(name, value_node, filename)
    lines = {f"{s_node.value}.{k_node.value}": _line(v_node) for s_node, s_value in root.value
             if isinstance(s_value, yaml.MappingNode) for k_node, v_node in s_value.value}
    return Layer(filename, sections, lines)


def _section(name: str, node: yaml.Node, filename: str) -> dict[str, Any]:
    """The keys a section sets, validated; an empty section sets none."""
    if _is_null(node):
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(filename, _line(node), name, f"expected a mapping of {name} keys, got {_kind(node)}")
    specs = SCHEMA[name]
    values: dict[str, Any] = {}
    for key_node, value_node in _pairs(node, filename, name):
        key, dotted = key_node.value, f"{name}.{key_node.value}"
        if key not in specs:
            hint = _suggest(key, list(specs), prefix=f"{name}.")
            if key.lower().replace("-", "_") == "api_key":
                hint = "the YAML names a key file, never a key: use realtime.api_key_file"
            raise ConfigError(filename, _line(key_node), f"{name}.{_name_shown(key)}", "unknown key", hint)
        values[key] = _value(dotted, specs[key], value_node, filename)
    return values


PRICE_FIELDS: Final = ("text_in", "text_out", "audio_in", "audio_out", "text_cached", "audio_cached")


def _prices(node: yaml.Node, filename: str) -> dict[str, Prices]:
    """``cost.prices``: model → {price: USD per 1M tokens}; each error names its line and key."""
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(filename, _line(node), "cost.prices", f"expected a mapping of models, got {_kind(node)}")
    out: dict[str, Prices] = {}
    for model_node, fields_node in _pairs(node, filename, "cost.prices"):
        where = f"cost.prices.{_name_shown(model_node.value)}"
        if not isinstance(fields_node, yaml.MappingNode):
            raise ConfigError(filename, _line(fields_node), where, f"expected a mapping of prices, got "
                                                                  f"{_kind(fields_node)}", ", ".join(PRICE_FIELDS))
        values: dict[str, float] = {}
        for key_node, value_node in _pairs(fields_node, filename, where):
            if key_node.value not in PRICE_FIELDS:
                raise ConfigError(filename, _line(key_node), f"{where}.{_name_shown(key_node.value)}",
                                  "unknown price", _suggest(key_node.value, list(PRICE_FIELDS)))
            value = _value(f"{where}.{key_node.value}", _Spec(float, False), value_node, filename)
            if value < 0:
                raise ConfigError(filename, _line(value_node), f"{where}.{key_node.value}", "must be 0 or more")
            values[key_node.value] = value
        missing = [f for f in PRICE_FIELDS[:4] if f not in values]
        if missing:
            raise ConfigError(filename, _line(model_node), where, "has no " + ", ".join(missing))
        out[model_node.value] = Prices(**values)
    return out


def price_table(cfg: KioskConfig) -> dict[str, Prices]:
    """The built-in prices, with ``cost.prices`` replacing or adding models."""
    return {**DEFAULT_PRICES, **(cfg.cost.prices or {})}


def _value(dotted: str, spec: _Spec, node: yaml.Node, filename: str) -> Any:
    if dotted == "cost.prices" and not _is_null(node):
        return _prices(node, filename)
    line = _line(node)
    if _is_null(node):
        if spec.optional:
            return None
        raise ConfigError(filename, line, dotted, f"expected {spec.expected()}, got null")
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(filename, line, dotted, f"expected {spec.expected()}, got {_kind(node)}")
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        # only the problem: str(exc) quotes the source line, which may hold a secret
        raise ConfigError(filename, line, dotted, f"invalid value: {exc.problem or 'unreadable'}") from None
    value = _coerce(dotted, spec, value, filename, line)
    problem = CHECKS[dotted](value) if dotted in CHECKS else None
    if problem:
        raise ConfigError(filename, line, dotted, problem)
    if dotted in PATH_KEYS and not (dotted.startswith("prompts.") and value == "default"):
        base = os.path.dirname(os.path.abspath(filename))
        value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    return value


def _coerce(dotted: str, spec: _Spec, value: Any, filename: str, line: int) -> Any:
    """Check the constructed value's type; only int → float widens (YAML writes 10 for 10.0)."""
    kind = spec.kind
    fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, fits = float(value), True
    if not fits:
        # never echo what sits where a key file name belongs: it may be the key itself
        secret = dotted == "realtime.api_key_file"
        shown = f"a {type(value).__name__}" if secret else _shown(value)
        hint = None
        if kind is str and isinstance(value, (int, float)) and not secret:
            hint = f'quote it: "{value}"'
        elif spec.optional and isinstance(value, str) and value.lower() in ("none", "off", "false"):
            hint = "use null to turn it off"
        raise ConfigError(filename, line, dotted, f"expected {spec.expected()}, got {shown}", hint)
    if kind is float and not math.isfinite(value):
        raise ConfigError(filename, line, dotted, "must be a finite number")
    if spec.choices and value not in spec.choices:
        close = difflib.get_close_matches(value.lower(), spec.choices, n=1)
        hint = f"did you mean {close[0]}?" if close else None
        raise ConfigError(filename, line, dotted, f"{_shown(value)} is not one of {', '.join(spec.choices)}", hint)
    return value


def _cross_check(cfg: KioskConfig, order: Sequence[str]) -> None:
    def blamed(first: str, second: str) -> str:
        """Of two keys in conflict, the one the later file set; ``first`` when one file set both."""
        def rank(key: str) -> int:
            return order.index(cfg.files[key]) if key in cfg.files else -1
        return second if rank(second) > rank(first) else first

    low, high = cfg.audio.prebuffer_min_ms, cfg.audio.prebuffer_max_ms
    if low > high:
        if blamed("audio.prebuffer_min_ms", "audio.prebuffer_max_ms") == "audio.prebuffer_min_ms":
            raise ConfigError(*cfg.where("audio.prebuffer_min_ms"), "audio.prebuffer_min_ms",
                              f"is more than audio.prebuffer_max_ms ({high:g})",
                              "make prebuffer_min_ms <= prebuffer_max_ms")
        raise ConfigError(*cfg.where("audio.prebuffer_max_ms"), "audio.prebuffer_max_ms",
                          f"is less than audio.prebuffer_min_ms ({low:g})", "make prebuffer_min_ms <= prebuffer_max_ms")
    if cfg.realtime.transport == "webrtc":
        from kioskd.adapters import rtc_internals

        problem = rtc_internals.missing()
        if problem is not None:
            raise ConfigError(*cfg.where("realtime.transport"), "realtime.transport", problem)
        if cfg.audio.input_format != "pcm16":
            key = blamed("realtime.transport", "audio.input_format")
            raise ConfigError(*cfg.where(key), key, f"audio.input_format {cfg.audio.input_format} is for the "
                              "websocket transport",
                              "over webrtc the question goes up as Opus: leave audio.input_format at pcm16")
    if cfg.led.pin is not None and cfg.led.pin == cfg.button.pin:
        if blamed("led.pin", "button.pin") == "led.pin":
            raise ConfigError(*cfg.where("led.pin"), "led.pin", "is the same pin as button.pin",
                              "use another pin, or null for no LED")
        raise ConfigError(*cfg.where("button.pin"), "button.pin", "is the same pin as led.pin",
                          "use another pin, or set led.pin")


def _syntax_hint(problem: str) -> str | None:
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "<block" in problem or "indentation" in problem:
        return "check the indentation: two spaces before each key of a section"
    if "mapping values are not allowed" in problem:
        return "quote a value that contains ': '"
    return None


def _pairs(node: yaml.MappingNode, filename: str, section: str | None) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    """The mapping's (key, value) node pairs; rejects non-string and duplicate keys (PyYAML keeps the last)."""
    seen: set[str] = set()
    out: list[tuple[yaml.ScalarNode, yaml.Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            what = "a section name" if section is None else f"a {section} key name"
            raise ConfigError(filename, _line(key_node), section, f"expected {what}, got {_kind(key_node)}")
        shown = _name_shown(key_node.value)
        dotted = shown if section is None else f"{section}.{shown}"
        if key_node.value in seen:
            raise ConfigError(filename, _line(key_node), dotted, "duplicate key")
        seen.add(key_node.value)
        out.append((key_node, value_node))
    return out


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return _shown(node.value)


#: longer text in a config error is described, not quoted: a key pasted in the wrong place must never be echoed
SHOWN_MAX_CHARS: Final = 24


def _name_shown(name: str) -> str:
    """A mapping key for an error message: a key-like one (a key pasted as a line of its own) is not echoed."""
    if len(name) > 2 * SHOWN_MAX_CHARS or name.lower().startswith(("sk-", "sk_")):
        return "(a key-like name, not shown)"
    return name


def _shown(value: Any) -> str:
    """``value`` for an error message. Any text could be a misplaced key (``realtime: sk-proj-…``), so text is
    quoted only when short and not key-like; otherwise only its length is said."""
    if not isinstance(value, str):
        return repr(value)
    if len(value) > SHOWN_MAX_CHARS or value.lower().startswith(("sk-", "sk_")):
        return f"a {len(value)}-character text (not shown: it could be a key)"
    return repr(value)


def _suggest(name: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return "valid: " + ", ".join(prefix + v for v in valid)


# ---------------------------------------------------------------------------------------------------- derived


#: systemd's RuntimeDirectory=kioskd
SERVICE_RUNTIME_DIR: Final = "/run/kioskd"
#: where the last-resort socket directory kioskd-<uid> goes (see ``private_dir``)
FALLBACK_SOCKET_ROOT: Final = "/tmp"
PRIVATE_DIR_MODE: Final = 0o700


#: the embedded simulator's model (it prices and names turns like the real one)
SIMULATED_MODEL: Final = "gpt-realtime"


def realtime_model(cfg: KioskConfig) -> str:
    """The model the Realtime endpoint answers with: ``cost.model``, else the URL's ``model=``, else (no URL:
    the embedded simulator) ``SIMULATED_MODEL``."""
    if cfg.cost.model:
        return cfg.cost.model
    if cfg.realtime.url is None:
        return SIMULATED_MODEL
    return next((v for k, v in parse_qsl(urlsplit(cfg.realtime.url).query) if k == "model" and v), "")


def has_fallback(cfg: KioskConfig) -> bool:
    """A Chat Completions fallback answers while the Realtime link is down: fallback.url, or the embedded
    simulator's own (no realtime.url, simulator.fallback)."""
    return cfg.fallback.url is not None or (cfg.realtime.url is None and cfg.simulator.fallback)


def check_prices(cfg: KioskConfig) -> None:
    """A model with no price is a config error, never a silent zero; so is an A/B arm with nothing behind it.
    Raises ConfigError (file, line, key)."""
    known = ", ".join(price_table(cfg))
    model = realtime_model(cfg)
    if prices_for(model, price_table(cfg)) is None:
        key = "cost.model" if cfg.cost.model else "realtime.url"
        problem = f"no price for the model {model!r}" if model else "names no model= to price"
        raise ConfigError(*cfg.where(key), key, problem,
                          f"set cost.model to the model it runs (one of {known}), or give its prices in cost.prices")
    if has_fallback(cfg) and prices_for(cfg.fallback.model, price_table(cfg)) is None:
        raise ConfigError(*cfg.where("fallback.model"), "fallback.model",
                          f"no price for the model {cfg.fallback.model!r}",
                          f"name one of {known}, or give its prices in cost.prices")
    for key, name in (("cost.degrade_model", cfg.cost.degrade_model),
                      ("ab.arm", cfg.ab.arm if cfg.ab.arm != "fallback" else None)):
        if name is not None and prices_for(name, price_table(cfg)) is None:
            raise ConfigError(*cfg.where(key), key, f"no price for the model {name!r}",
                              f"name one of {known}, or give its prices in cost.prices")
    if cfg.ab.split > 0 and cfg.ab.arm == "fallback" and not has_fallback(cfg):
        raise ConfigError(*cfg.where("ab.split"), "ab.split",
                          "the A/B arm 'fallback' has no endpoint", "set fallback.url")
    if cfg.cost.degrade_model is not None and cfg.cost.daily_budget_usd is None:
        raise ConfigError(*cfg.where("cost.degrade_model"), "cost.degrade_model",
                          "degrades from a share of the budget, and there is none", "set cost.daily_budget_usd")


def core_settings(cfg: KioskConfig, *, endpoint: str, tools: tuple[ToolSpec, ...] = ()) -> Settings:
    """The core's settings from the config; ``endpoint``: where the link connects (no query string); ``tools``:
    the function tools the session declares (``checks.Checked.tool_specs``)."""
    r, t, e = cfg.realtime, cfg.turn, cfg.exhibit
    model = realtime_model(cfg)
    fallback = (ModelArm("chat", cfg.fallback.model, prices_for(cfg.fallback.model, price_table(cfg)))
                if has_fallback(cfg) else None)
    c = cfg.cost
    degrade = ModelArm("realtime", c.degrade_model, prices_for(c.degrade_model, price_table(cfg))) \
        if c.degrade_model else None
    ab_arm = fallback if cfg.ab.arm == "fallback" else \
        ModelArm("realtime", cfg.ab.arm, prices_for(cfg.ab.arm, price_table(cfg)))
    instructions = guide.instructions(e.instructions or r.instructions, name=e.name, language=e.language,
                                      tools=tools)
    return Settings(
        link=LinkSettings(
            endpoint=endpoint, voice=r.voice, instructions=instructions, tools=tools,
            context_tokens=cfg.conversation.context_tokens, max_output_tokens=t.max_reply_tokens,
            input_format=cfg.audio.input_format, narrow_backlog_ms=cfg.audio.narrow_backlog_ms,
            connect_timeout_s=r.connect_timeout_s,
            recycle_margin_s=r.recycle_margin_s, healthy_after_s=r.healthy_after_s,
            backoff_first_max_s=r.backoff_first_max_s, backoff_cap_s=r.backoff_cap_s, fault_retry_s=r.fault_retry_s,
            quick_failure_s=r.quick_failure_s, quick_failures_fatal=r.quick_failures_fatal,
        ),
        turn=TurnSettings(
            min_hold_ms=t.min_hold_ms, append_ms=t.append_ms, preroll_ms=cfg.audio.preroll_ms,
            hold_cap_s=t.hold_cap_s, reply_wait_s=t.reply_wait_s, reply_cap_s=t.reply_cap_s, rearm_ms=t.rearm_ms,
            earcons=cfg.audio.earcons, thinking_cue_s=t.thinking_cue_s, usage_wait_s=t.usage_wait_s,
            new_visitor_after_s=cfg.conversation.new_visitor_after_s, model=model, prices=prices_for(model, price_table(cfg)),
            daily_budget_usd=c.daily_budget_usd, fallback=fallback, degrade=degrade, degrade_at=c.degrade_at,
            ab_split=cfg.ab.split if ab_arm is not None else 0.0, ab_arm=ab_arm if cfg.ab.split > 0 else None,
        ),
    )


def control_socket_path(cfg: ControlConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The control socket's path: the configured one, else $RUNTIME_DIRECTORY/control.sock (systemd's
    ``RuntimeDirectory=``; the first entry if several), else /run/kioskd/control.sock when that directory
    exists (the installed service, seen from a technician's shell), else $XDG_RUNTIME_DIR/kioskd.sock, else
    /tmp/kioskd-<uid>/control.sock, whose directory ``private_dir`` creates (0700) or refuses. kioskctl calls
    this too, so neither trusts a directory another user made. Raises ConfigError for such a directory."""
    if cfg.socket:
        return cfg.socket
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "control.sock")
    if os.path.isdir(SERVICE_RUNTIME_DIR):
        return os.path.join(SERVICE_RUNTIME_DIR, "control.sock")
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg:
        return os.path.join(xdg, "kioskd.sock")
    directory = os.path.join(FALLBACK_SOCKET_ROOT, f"kioskd-{os.getuid()}")
    private_dir(directory)
    return os.path.join(directory, "control.sock")


def private_dir(path: str) -> None:
    """Make sure ``path`` is a directory only this user can change, creating it (``PRIVATE_DIR_MODE``) when
    absent. In a shared /tmp anyone may have made it first, and a socket they put there would answer kioskctl
    in kioskd's place; so raise ConfigError, naming the directory, when it is a symbolic link or not a
    directory, is owned by another user, or is writable by its group or by others."""
    hint = "remove it, or set control.socket"
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, PRIVATE_DIR_MODE)  # never follows a symbolic link; the umask can only narrow it
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot create the control socket directory: {exc.strerror}",
                          hint) from exc
    uid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != uid:
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return
    raise ConfigError(path, None, None, f"control socket directory {problem}: a socket there could be another "
                      "user's, answering in kioskd's place", hint)


def effective_auth(cfg: RealtimeConfig) -> Literal["bearer", "api-key"]:
    """The header scheme ``auto`` resolves to: ``api-key`` for Azure hosts, else ``bearer``."""
    if cfg.auth != "auto":
        return cfg.auth
    host = urlsplit(cfg.url or "").hostname or ""
    return "api-key" if host.endswith(AZURE_HOST_SUFFIX) else "bearer"


def read_api_key(cfg: RealtimeConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key: from ``api_key_file`` if set, else $CREDENTIALS_DIRECTORY/openai_api_key if present, else
    $OPENAI_API_KEY, else None (fine for the simulator). Raises ConfigError (naming the file, never the key)
    for a missing, unreadable, world-readable or empty key file."""
    if cfg.api_key_file is not None:
        return _read_key_file(cfg.api_key_file, "realtime.api_key_file", refuse_world_readable=True)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = os.path.join(credentials, CREDENTIAL_NAME)
        if os.path.exists(path):
            # systemd makes credentials readable by the service alone, so the mode check does not apply
            return _read_key_file(path, None, refuse_world_readable=False)
    value = environ.get(API_KEY_ENV, "").strip()
    if value:
        _check_key(value, API_KEY_ENV, None)
        return value
    return None


def _read_key_file(path: str, key: str | None, *, refuse_world_readable: bool) -> str:
    text, mode = read_small_text(path, key, "key file", KEY_FILE_MAX_BYTES)
    if refuse_world_readable and mode & 0o004:
        raise ConfigError(path, None, key, "key file is readable by other users", f"run: chmod 600 {path}")
    value = text.strip()
    if not value:
        raise ConfigError(path, None, key, "key file is empty")
    _check_key(value, path, key)
    return value


def _check_key(value: str, where: str, key: str | None) -> None:
    # a key with a newline or space inside would corrupt the handshake header; say so without showing it
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(where, None, key, "the key contains whitespace or control characters",
                          "the file must hold only the key, on one line")


#: schemes that carry a key unencrypted (http:// for the HTTP endpoints to come)
PLAINTEXT_SCHEMES: Final = frozenset({"ws", "http"})


def read_fallback_key(cfg: KioskConfig, realtime_key: str | None) -> str | None:
    """The fallback's key: ``fallback.api_key_file`` (checked as the Realtime one), else the Realtime key."""
    if cfg.fallback.api_key_file is not None:
        return _read_key_file(cfg.fallback.api_key_file, "fallback.api_key_file", refuse_world_readable=True)
    return realtime_key


def check_credentials(cfg: KioskConfig, url: str, api_key: str | None, key: str = "realtime.url") -> list[str]:
    """What ``run`` (and ``check-config``, and a reload) requires of the key and the endpoint (``key``: the
    config key naming it) it goes to: a wss:// or https:// endpoint needs a key, and a key never goes
    unencrypted to another machine unless ``realtime.allow_plaintext`` says so. Raises ConfigError naming file,
    line and key; returns warnings to log (a key allowed over plaintext)."""
    parts = urlsplit(url)
    where = (*cfg.where(key), key)
    if parts.scheme in ("wss", "https") and not api_key:
        raise ConfigError(*where, "no API key for this endpoint",
                          "set realtime.api_key_file, systemd LoadCredential=openai_api_key, or OPENAI_API_KEY")
    if not api_key or parts.scheme not in PLAINTEXT_SCHEMES or is_loopback(parts.hostname or ""):
        return []
    if not cfg.realtime.allow_plaintext:
        raise ConfigError(*where, f"{parts.scheme}:// would send the API key unencrypted to {parts.hostname}",
                          f"use {parts.scheme}s://, or set realtime.allow_plaintext: true for a test link")
    return [f"the API key goes unencrypted ({parts.scheme}://) to {parts.hostname}: realtime.allow_plaintext"]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_source(cfg: RealtimeConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where ``read_api_key`` would look first with success, without reading the key."""
    if cfg.api_key_file is not None:
        return cfg.api_key_file
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.path.exists(os.path.join(credentials, CREDENTIAL_NAME)):
        return os.path.join(credentials, CREDENTIAL_NAME)
    return API_KEY_ENV if environ.get(API_KEY_ENV, "").strip() else None


def describe(cfg: KioskConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The effective config as plain JSON-ready data for ``kioskd check-config``: every key, the file and line
    of each key a file sets (``set_in``), plus the values the defaults resolve to. Names where the key would
    come from; never reads or includes it."""
    out: dict[str, Any] = {"source": cfg.source}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    # which file (of a base and its overlay) set each key, and where
    out["set_in"] = {key: f"{file}:{cfg.lines[key]}" for key, file in cfg.files.items()}
    out["effective"] = {
        "endpoint": cfg.realtime.url or "embedded simulator on loopback",
        "auth": effective_auth(cfg.realtime),
        "api_key_source": api_key_source(cfg.realtime, environ),
        "control_socket": control_socket_path(cfg.control, environ),
    }
    return out
