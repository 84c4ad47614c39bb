"""Values that cross the core boundary.

Inputs are facts (something happened); actions are commands (do this). All are frozen dataclasses. PCM payloads
are numpy int16 arrays at 24 kHz mono unless a field says otherwise; such dataclasses compare by identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

from kioskd.core.pcm import Pcm
from kioskd.core.settings import Backend as Backend
from kioskd.core.settings import InputFormat, Settings, ToolSpec

# ---------------------------------------------------------------------------------------------------- names


class Led(str, Enum):
    """LED patterns the core names; button.py gives them timings."""

    OFF = "off"
    OFFLINE = "offline"  # slow blink
    ERROR = "error"  # fast blink
    IDLE = "idle"  # dim steady
    LISTENING = "listening"  # full on
    THINKING = "thinking"  # quick pulse
    SPEAKING = "speaking"  # slow pulse
    CLOSED = "closed"  # a faint glow: resting (the day's budget is spent)


class Timer(str, Enum):
    CONNECT = "connect"
    RECONNECT = "reconnect"
    RECYCLE = "recycle"
    HOLD_CAP = "hold_cap"
    REPLY_WAIT = "reply_wait"
    REPLY_CAP = "reply_cap"
    THINKING_CUE = "thinking_cue"
    USAGE_WAIT = "usage_wait"
    NEW_VISITOR = "new_visitor"
    LOG_SUMMARY = "log_summary"  # the kiosk's, not a machine's: say what core/bound.py held back


class Mic(str, Enum):
    """The microphone gate: what the audio adapter does with captured blocks."""

    OFF = "off"  # nothing kept, nothing posted (a reply is playing, or no turn can start)
    PREROLL = "preroll"  # the newest pre-roll kept in the adapter, nothing posted (between visitors)
    LIVE = "live"  # every block posted as MicBlock (the button is held)


class Earcon(str, Enum):
    PRESS = "press"
    THINKING = "thinking"
    OFFLINE = "offline"
    APOLOGY = "apology"
    CLOSED = "closed"  # the budget is spent: "please come back later"


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Pressed:
    at_s: float


@dataclass(frozen=True, slots=True)
class Released:
    at_s: float


@dataclass(frozen=True, slots=True, eq=False)
class MicBlock:
    """Microphone audio already resampled to 24 kHz mono PCM16."""

    pcm: Pcm


@dataclass(frozen=True, slots=True)
class Timeout:
    timer: Timer


@dataclass(frozen=True, slots=True)
class Connected:
    """The WebSocket handshake succeeded (no session yet)."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection failed or closed; ``cause`` is a KioskError or builtin exception."""

    cause: BaseException


@dataclass(frozen=True, slots=True)
class Played:
    """Result of an ``Interrupt``: the item that was playing and how much of it the visitor heard."""

    item_id: str | None
    played_ms: int


@dataclass(frozen=True, slots=True)
class PlaybackDrained:
    """The playout buffer ran dry after ``EndOfReply``: the reply has been heard in full, all but ``dropped_ms``.

    ``underruns_total`` is the buffer's running underrun count, so the core can tell how many fell in this turn.
    ``dropped_ms`` is audio the buffer had no room for since the previous drain or interrupt (never heard; the
    audio adapter has logged it as ``audio.overflow``).
    """

    underruns_total: int = 0
    playout: dict[str, Any] = field(default_factory=dict)  # the buffer's stats when it drained (target, depth…)
    dropped_ms: int = 0


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A new config was applied (systemctl reload): caps apply at once; a changed session (voice, instructions,
    endpoint) is renewed between visitors, never mid-turn."""

    settings: Settings


@dataclass(frozen=True, slots=True)
class SpeakerReopenDue:
    """The speaker keeps running dry: reopen it with a ``latency_s`` device queue, between visitors."""

    latency_s: float


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether ``backend`` can answer a question now; ``reason`` says why not (the link's phase)."""

    backend: Backend
    up: bool
    reason: str = ""  # the link's phase: offline, fault, connecting
    cause: str = ""  # what took it down, for the turn it cost
    model: str = ""  # the model the backend's session runs (up only)


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The visitor's turn returned to idle; ``answered``: the reply was heard in full (the link is healthy)."""

    answered: bool


@dataclass(frozen=True, slots=True)
class PlaybackStarted:
    """The speaker started sounding queued audio (after the prebuffer); ``at_s`` is when it becomes audible."""

    at_s: float


# server events (parsed once, in core/realtime.py)


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    expires_at_s: float | None  # Unix time of the session deadline, as the server sent it
    expires_in_s: float | None = None  # the same deadline from now: filled in by the adapter, which has a clock


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    turn_detection: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str
    backend: Backend = "realtime"  # a Chat Completions reply is none of the Realtime session's business


@dataclass(frozen=True, slots=True, eq=False)
class AudioDelta:
    response_id: str
    item_id: str
    pcm: Pcm


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str  # completed | cancelled | incomplete | failed
    reason: str | None
    usage: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ServerError:
    """A server ``error`` event."""

    code: str | None
    message: str
    error_type: str | None
    event_id: str | None  # the client event at fault


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """A known server event that changes nothing in the turn (acknowledgements, transcript deltas...)."""

    type: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A server event type kioskd does not know: counted and ignored."""

    type: str


@dataclass(frozen=True, slots=True)
class Spent:
    """What today's answers have cost so far (USD); 0 again after local midnight."""

    today_usd: float


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """The service added an item to the conversation (a question, an answer, a tool call or output)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model called a function (its item is done): ``arguments`` is its JSON text, as the model wrote it."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str
    complete: bool = True  # False: cut short by a cancel or a cap; answered, never run


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool the core asked for (``RunTool``) has an answer: ``output`` is JSON text for the model."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class UplinkBacklog:
    """At a commit, how much of the question's audio had not yet reached the server (ms of audio: unsent or
    unacknowledged): the link adapter's measure of a question falling behind on a slow or lossy uplink."""

    backlog_ms: int


#: why a server frame could not be used, in kioskd's own words (never the server's text)
BadReason = Literal["binary", "not_json", "not_an_event", "missing_field", "bad_field", "bad_audio", "too_much_audio"]


@dataclass(frozen=True, slots=True)
class BadEvent:
    """A server frame kioskd could not use. ``event_type`` is one kioskd parses, ``(unparsed)`` or ``(binary)``;
    ``reason`` is kioskd's word for what was wrong; ``detail`` says more and may quote the server."""

    event_type: str
    reason: BadReason
    detail: str = ""


Input = (
    Pressed | Released | MicBlock | Timeout | Connected | Disconnected | Played | PlaybackDrained | PlaybackStarted
    | Reloaded | SpeakerReopenDue | Availability | TurnEnded
    | SessionCreated | SessionUpdated | InputCommitted | ResponseCreated | AudioDelta | AudioDone
    | TranscriptDone | ResponseDone | ItemTruncated | ServerError | ServerEvent | Unknown | BadEvent | ToolCall
    | ToolResult | ItemAdded | Spent | UplinkBacklog
)

# ---------------------------------------------------------------------------------------------------- actions
# Intentions: what to say to the model. One encoder per backend says how (core/realtime.py: GA Realtime events).


@dataclass(frozen=True, slots=True)
class ConfigureSession:
    """Configure the new session for push-to-talk audio; ``ref`` names it, so a refusal can be recognised."""

    ref: str
    voice: str
    instructions: str
    tools: tuple[ToolSpec, ...] = ()
    context_tokens: int | None = None
    max_output_tokens: int | None = None
    input_format: InputFormat = "pcm16"


@dataclass(frozen=True, slots=True)
class StartQuestion:
    """A new question begins: forget any audio buffered server-side for the last one."""


@dataclass(frozen=True, slots=True, eq=False)
class AppendAudio:
    """Microphone audio (24 kHz) for the question being asked."""

    pcm: Pcm


@dataclass(frozen=True, slots=True)
class Commit:
    """The question is complete (the button was released)."""


@dataclass(frozen=True, slots=True)
class RequestReply:
    """Ask for a reply to the conversation so far; ``ref`` names the request, so an error can be traced to it.
    ``tools=False``: the reply may call no tool (the follow-up of a turn that has called enough)."""

    ref: str
    tools: bool = True


@dataclass(frozen=True, slots=True)
class CancelReply:
    """Stop generating the reply ``response_id`` (None: the one in progress)."""

    response_id: str | None


@dataclass(frozen=True, slots=True)
class Truncate:
    """The visitor heard ``audio_end_ms`` of ``item_id``: drop the rest from the conversation."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ClearOutput:
    """Drop reply audio the service still holds for us (a transport that buffers output server-side)."""


@dataclass(frozen=True, slots=True)
class ReturnToolOutput:
    """A tool's result for the model's call ``call_id`` (JSON text)."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class DeleteItem:
    """Remove ``item_id`` from the conversation."""

    item_id: str


Intent = (
    ConfigureSession | StartQuestion | AppendAudio | Commit | RequestReply | CancelReply | Truncate | ClearOutput
    | ReturnToolOutput | DeleteItem
)
INTENTS: Final = (ConfigureSession, StartQuestion, AppendAudio, Commit, RequestReply, CancelReply, Truncate,
                  ClearOutput, ReturnToolOutput, DeleteItem)


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new session (the link adapter replaces any open one) running ``model`` ("": the URL's own)."""

    model: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the session normally."""


@dataclass(frozen=True, slots=True, eq=False)
class Play:
    """Queue reply audio (24 kHz) for ``item_id`` on the speaker."""

    pcm: Pcm
    item_id: str


@dataclass(frozen=True, slots=True)
class EndOfReply:
    """No more audio is coming for this reply: play the tail below the prebuffer target."""


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stop the speaker at once (a few ms fade) and report back ``Played(item_id, played_ms)``."""


@dataclass(frozen=True, slots=True)
class PlayEarcon:
    earcon: Earcon


@dataclass(frozen=True, slots=True)
class SetLed:
    pattern: Led


@dataclass(frozen=True, slots=True)
class SetMic:
    """Set the microphone gate."""

    mode: Mic


@dataclass(frozen=True, slots=True)
class ReopenSpeaker:
    """Reopen the speaker with a ``latency_s`` device queue now: nothing of a visit is playing."""

    latency_s: float


@dataclass(frozen=True, slots=True)
class Publish:
    """The public phase changed; ``serving``: the kiosk answers presses (READY=1 for systemd from now on)."""

    phase: str
    serving: bool


@dataclass(frozen=True, slots=True)
class Exit:
    """Stop the process with ``code`` (systemd restarts it): in-process recovery has failed."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Arm:
    """Arm ``timer`` to fire ``Timeout(timer)`` at ``at_s`` (same clock as ``now``); re-arming replaces."""

    timer: Timer
    at_s: float


@dataclass(frozen=True, slots=True)
class Disarm:
    timer: Timer


Level = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Route:
    """The visitor's intentions go to ``backend`` from now on (the link's own, the session's configuration,
    always go to the Realtime link)."""

    backend: Backend


@dataclass(frozen=True, slots=True)
class ResetFallback:
    """Drop whatever the fallback backend holds: replies in flight and the visitor's conversation (fresh machines
    after a kioskd bug know none of it)."""


@dataclass(frozen=True, slots=True)
class RunTool:
    """Run the tool ``name`` with the model's ``arguments`` (JSON text); its answer comes back as ``ToolResult``."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CancelTool:
    """Stop the tool run for ``call_id``: its answer is no longer wanted (no ``ToolResult`` follows)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Note:
    """One observation for the sinks (the log line, the status counters, metrics): a stable dotted event name,
    a level and fields."""

    name: str
    level: Level = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Action = (
    Intent | Connect | Close | Play | EndOfReply | Interrupt | PlayEarcon | SetLed | SetMic | ReopenSpeaker
    | Publish | Exit | Arm | Disarm | Note | RunTool | CancelTool | Route | ResetFallback
)
