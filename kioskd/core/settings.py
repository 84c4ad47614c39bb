"""The core's settings: the one source of every default the link and the turn use.

``config.py`` builds these from the YAML (each tunable that is measured on site has a key there); tests build them
directly. Frozen: a reload hands the core new ones (``Reloaded``), it never edits them in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kioskd.core.cost import DEFAULT_PRICES, Prices

#: who answers a visitor: the Realtime API (a session over the link) or Chat Completions audio (one request per
#: reply, the held question uploaded as WAV)
Backend = Literal["realtime", "chat"]
#: how the question travels to the Realtime API: PCM16 at 24 kHz, or G.711 µ-law at 8 kHz (a sixth of the bytes)
InputFormat = Literal["pcm16", "pcmu"]
#: what ``audio.input_format`` may say: a format, or ``auto`` (pcm16 until the question falls behind on the uplink)
UplinkFormat = Literal["pcm16", "pcmu", "auto"]


@dataclass(frozen=True, slots=True)
class ModelArm:
    """One way of answering a visitor: a backend and the model behind it, with its prices (None: unknown)."""

    backend: Backend
    model: str
    prices: Prices | None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool the session declares: its name, what it is for (the model reads it), and its arguments'
    JSON schema, as JSON text (so settings stay hashable and compare by value)."""

    name: str
    description: str
    parameters_json: str


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """The connection to the Realtime service: session, caps and the reconnect policy."""

    endpoint: str = ""
    """Where the link connects (no query string): a change renews the session."""
    voice: str = "marin"
    instructions: str = ""
    connect_timeout_s: float = 10.0
    """From opening the socket to a configured session."""
    recycle_margin_s: float = 120.0
    """Renew the session this long before the server's ``expires_at`` (only between visitors)."""
    healthy_after_s: float = 60.0
    """A session up this long resets the reconnect backoff."""
    backoff_first_max_s: float = 1.0
    backoff_cap_s: float = 30.0
    fault_retry_s: float = 120.0
    """In FAULT (bad key, no quota, unknown model) try again after this long, or at once on reload."""
    quick_failure_s: float = 5.0
    """A session that dies this soon after it was ready, before serving any response, is a quick failure."""
    quick_failures_fatal: int = 3
    """This many quick failures in a row: the endpoint or config is broken, not the network (FAULT)."""
    tools: tuple[ToolSpec, ...] = ()
    """The function tools the session declares."""
    context_tokens: int | None = None
    """The conversation kept after the instructions (the server drops the oldest past it); None: the server's
    default."""
    max_output_tokens: int | None = None
    """The most one reply may produce (audio, text and tool calls); None: the server's default."""
    input_format: UplinkFormat = "pcm16"
    """The question's format on the wire: ``pcmu`` sends it as 8 kHz G.711 µ-law (the session declares it);
    ``auto`` starts each session with pcm16 and narrows it to pcmu once a question is still ``narrow_backlog_ms``
    from the server at release (``UplinkBacklog``)."""
    narrow_backlog_ms: int = 300
    """``auto``: the question's audio not yet delivered at release (ms of audio) that narrows the session's uplink."""

    @property
    def session(self) -> tuple[object, ...]:
        """What a configured session depends on: a change needs a new session."""
        return (self.endpoint, self.voice, self.instructions, self.tools, self.context_tokens,
                self.max_output_tokens, self.input_format)

    def uplink_format(self, narrowed: bool) -> InputFormat:
        """The format a session is configured with: ``auto`` is pcm16 until the session's uplink was narrowed."""
        if self.input_format == "auto":
            return "pcmu" if narrowed else "pcm16"
        return self.input_format


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """A visitor's turn: the press, the question, the reply, and their caps."""

    min_hold_ms: int = 100
    """Held audio below this is dropped, never committed."""
    append_ms: int = 20
    """Microphone audio is sent in chunks of at least this much."""
    preroll_ms: int = 0
    """Audio from before the press sent with the question (0: off)."""
    hold_cap_s: float = 30.0
    reply_wait_s: float = 10.0
    """From the commit to the first reply audio."""
    reply_cap_s: float = 90.0
    rearm_ms: int = 50
    """A press this soon after a release is a bounce."""
    earcons: bool = True
    thinking_cue_s: float = 1.5
    """No reply audio this long after release: a soft "still thinking" sound."""
    new_visitor_after_s: float = 45.0
    """Quiet this long (from the end of the last reply, or the last release) makes the next press a new
    visitor: a fresh conversation."""
    model: str = "gpt-realtime"
    """The model answering (priced by ``prices``; named in every ``turn.done``)."""
    prices: Prices | None = DEFAULT_PRICES["gpt-realtime"]
    """Its prices; None: unknown (no cost is counted)."""
    daily_budget_usd: float | None = None
    """Once today's answers have cost this much, presses get the "come back later" prompt; None: no budget."""
    usage_wait_s: float = 5.0
    """How long an ended turn waits for its responses' late ``response.done`` (their usage) before it is logged
    with the usage missing."""
    fallback: ModelArm | None = None
    """The Chat Completions arm that answers while the Realtime link is down; None: no fallback."""
    ab_split: float = 0.0
    """The share of new visitors routed to ``ab_arm`` (0: none): whole visitors, never single turns."""
    ab_arm: ModelArm | None = None
    """The A/B test's second arm (the first is the Realtime ``model``); None: no test."""
    degrade: ModelArm | None = None
    """The Realtime arm new visitors get instead of ``model`` once today's spending reaches ``degrade_at`` of the
    budget; None: never."""
    degrade_at: float = 0.8
    """The share of ``daily_budget_usd`` from which new visitors get ``degrade``."""

    @property
    def main(self) -> ModelArm:
        """The Realtime arm: ``model`` at ``prices``."""
        return ModelArm("realtime", self.model, self.prices)


@dataclass(frozen=True, slots=True)
class Settings:
    link: LinkSettings = field(default_factory=LinkSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
