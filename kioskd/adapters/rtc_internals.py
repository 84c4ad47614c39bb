"""What kioskd changes inside aiortc, in one place, for the pinned version only.

aiortc is the optional ``webrtc`` extra. Three of its defaults are wrong for a lossy museum Wi-Fi (reference
webrtc.md §2.6, §2.7), and all three can only be fixed by reaching into it (or aioice, which it runs on):

- **The audio jitter buffer.** aiortc's ``JitterBuffer(capacity=16, prefetch=4)`` stalls on a lost packet until
  its window overflows and then stays about 14 packets (280 ms) deep for good (aiortc#543). kioskd has its own
  adaptive playout buffer, so the receiver's only job is to put packets back in order and skip holes:
  ``AudioJitterBuffer`` holds ``PREFETCH_PACKETS`` (40 ms) and never grows. It replaces the receiver's private
  ``_RTCRtpReceiver__jitter_buffer`` for audio.
- **The SCTP retransmission floor.** aiortc retransmits a lost data-channel packet after at least 1 s
  (``SCTP_RTO_MIN``) and starts at 3 s (``SCTP_RTO_INITIAL``); a lost ``input_audio_buffer.commit`` would cost a
  second. kioskd sets 200 ms and 500 ms, the module globals aiortc reads when it computes a timeout.
- **Dead-peer detection.** aiortc learns that the peer is gone only from aioice's consent freshness (RFC 7675):
  a check every ``CONSENT_INTERVAL`` = 5 s, the call failed after ``CONSENT_FAILURES`` = 6 unanswered, about
  33 s of a kiosk talking to nobody (the WebSocket's keepalive gives up in 20-40 s). kioskd checks every
  ``CONSENT_INTERVAL_S`` (2 s), still 6 in a row: about 15 s. The module global is read at each check.

``tests/adapters/test_rtc_internals.py`` fails when the pinned version or any of these internals moves; moving
the pin means running it and the transport benchmark again.
"""

from __future__ import annotations

import functools
from typing import Any, Final

#: the one aiortc version kioskd's reach into its internals was written and tested against
AIORTC_VERSION: Final = "1.16.0"
INSTALL_HINT: Final = f"pip install 'kioskd[webrtc]' (aiortc=={AIORTC_VERSION})"
#: packets the audio jitter buffer holds before it releases the oldest: reordering within 40 ms is put right
PREFETCH_PACKETS: Final = 2
#: a packet this far (in sequence numbers) from the next one expected is a new stream: start again
RESET_DISTANCE: Final = 100
#: the most one data-channel stream may hold while aiortc puts a message together; past it the association is
#: dropped (the WebRTC connection closes). aiortc holds a message of any size (its receive window, 1 MiB, only
#: stops a sender that keeps to it, and then the message never completes), while kioskd refuses any message over
#: 256 KiB once whole (``adapters/webrtc``): twice that is held at most.
REASSEMBLY_MAX_BYTES: Final = 512 * 1024
#: an SCTP DATA chunk carries at most about 1,200 bytes: below this many chunks the sum need not be taken
_REASSEMBLY_CHUNKS_FREE: Final = 256
SCTP_RTO_MIN_S: Final = 0.2
SCTP_RTO_INITIAL_S: Final = 0.5
#: seconds between ICE consent checks (aioice: 5 s, ±20 %); 6 unanswered in a row (each waits 0.5 s) fail the call
CONSENT_INTERVAL_S: Final = 2.0


def missing() -> str | None:
    """Why the webrtc transport cannot run here (aiortc absent, or not the pinned version), or None."""
    try:
        import aiortc  # noqa: PLC0415  (optional extra: imported only when the webrtc transport is chosen)
    except ImportError:
        return f"webrtc needs the optional webrtc extra: {INSTALL_HINT}"
    if aiortc.__version__ != AIORTC_VERSION:
        return (f"webrtc needs aiortc {AIORTC_VERSION} exactly (kioskd reaches into its internals), found "
                f"{aiortc.__version__}: {INSTALL_HINT}")
    return None


class AudioJitterBuffer:
    """Audio only, one RTP packet per frame (Opus): hold ``prefetch`` packets, release the oldest as each new one
    arrives, and step over a hole rather than wait for it. A packet older than the next one expected is late and
    dropped. Same interface as aiortc's ``JitterBuffer.add``: at most one frame out per packet in, so the depth
    stays ``prefetch`` whatever was lost."""

    def __init__(self, prefetch: int = PREFETCH_PACKETS) -> None:
        self._prefetch = prefetch
        self._next: int | None = None  # the sequence number expected next out
        self._held: dict[int, Any] = {}  # sequence number → RtpPacket

    @property
    def depth(self) -> int:
        return len(self._held)

    def add(self, packet: Any) -> tuple[bool, Any]:
        from aiortc.jitterbuffer import JitterFrame  # noqa: PLC0415
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) % 65536
        if ahead >= 32768:  # behind the next expected: late or a duplicate
            if 65536 - ahead < RESET_DISTANCE:
                return False, None
            ahead = RESET_DISTANCE  # far behind: the sender started again
        if ahead >= RESET_DISTANCE:
            self._held.clear()
            self._next = seq
        self._held[seq] = packet
        if len(self._held) <= self._prefetch:
            return False, None
        while self._next not in self._held:  # a hole: lost, or still coming; waiting cannot help the speaker
            self._next = (self._next + 1) % 65536
        out = self._held.pop(self._next)
        self._next = (self._next + 1) % 65536
        return False, JitterFrame(data=out._data, timestamp=out.timestamp)


@functools.cache
def install() -> None:
    """Apply these changes to aiortc (once per process; peer connections built after this get them)."""
    problem = missing()
    if problem is not None:
        raise RuntimeError(problem)
    from aioice import ice  # noqa: PLC0415

    ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    from aiortc import rtcsctptransport  # noqa: PLC0415
    from aiortc.rtcrtpreceiver import RTCRtpReceiver  # noqa: PLC0415

    rtcsctptransport.SCTP_RTO_MIN = SCTP_RTO_MIN_S
    rtcsctptransport.SCTP_RTO_INITIAL = SCTP_RTO_INITIAL_S
    original = RTCRtpReceiver.__init__

    @functools.wraps(original)
    def init(self: Any, kind: str, transport: Any) -> None:
        original(self, kind, transport)
        if kind == "audio":
            if not hasattr(self, "_RTCRtpReceiver__jitter_buffer"):
                raise RuntimeError(f"aiortc {AIORTC_VERSION}'s receiver has no audio jitter buffer to replace")
            self._RTCRtpReceiver__jitter_buffer = AudioJitterBuffer()

    RTCRtpReceiver.__init__ = init

    # A call that fails early (ICE finds no path) has aiortc close its transports while a second connect task of
    # its own is still to run; that task then raises InvalidStateError into nobody, and asyncio prints "Task
    # exception was never retrieved" with a traceback on every failed call. It is over: let it end quietly.
    from aiortc import RTCPeerConnection  # noqa: PLC0415
    from aiortc.exceptions import InvalidStateError  # noqa: PLC0415

    connect = RTCPeerConnection._RTCPeerConnection__connect  # type: ignore[attr-defined]

    @functools.wraps(connect)
    async def connect_quietly(self: Any) -> None:
        try:
            await connect(self)
        except InvalidStateError:
            if self.connectionState not in ("failed", "closed"):
                raise

    RTCPeerConnection._RTCPeerConnection__connect = connect_quietly  # type: ignore[attr-defined]

    # A stream putting together a message bigger than kioskd would ever take: drop the association (DTLS's
    # reader ends the connection on a ConnectionError) rather than hold it; oversized(pc) tells the link why.
    from aiortc.rtcsctptransport import InboundStream  # noqa: PLC0415

    add_chunk = InboundStream.add_chunk

    @functools.wraps(add_chunk)
    def add_chunk_bounded(self: Any, chunk: Any) -> None:
        add_chunk(self, chunk)
        if len(self.reassembly) > _REASSEMBLY_CHUNKS_FREE and \
                sum(len(c.user_data) for c in self.reassembly) > REASSEMBLY_MAX_BYTES:
            self.reassembly.clear()
            self.kioskd_oversized = True
            raise ConnectionError(f"a data-channel message over {REASSEMBLY_MAX_BYTES // 1024} KiB")

    InboundStream.add_chunk = add_chunk_bounded  # type: ignore[method-assign]


def oversized(pc: Any) -> bool:
    """The peer connection was dropped because the server sent a message over ``REASSEMBLY_MAX_BYTES``."""
    sctp = getattr(pc, "sctp", None)
    streams = getattr(sctp, "_inbound_streams", {}) if sctp is not None else {}
    return any(getattr(stream, "kioskd_oversized", False) for stream in streams.values())


@functools.cache
def allow_loopback() -> None:
    """Offer 127.0.0.1 as a host candidate, which aioice leaves out (reference §2.7): only for a peer on this
    machine (the embedded simulator, tests); a kiosk talking to OpenAI never needs it."""
    from aioice import ice  # noqa: PLC0415
    found = ice.get_host_addresses

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1", *found(use_ipv4, use_ipv6)] if use_ipv4 else found(use_ipv4, use_ipv6)

    ice.get_host_addresses = with_loopback
