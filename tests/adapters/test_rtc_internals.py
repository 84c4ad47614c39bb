"""kioskd's reach into aiortc (adapters/rtc_internals.py): each test here fails when the pinned version or an
internal kioskd relies on moves, and the replacement audio jitter buffer does what aiortc's does not."""

from __future__ import annotations

import asyncio

import pytest

aiortc = pytest.importorskip("aiortc")

from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCSctpTransport  # noqa: E402
from aiortc.jitterbuffer import JitterBuffer  # noqa: E402
from aiortc.rtcrtpreceiver import RTCRtpReceiver  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from kioskd.adapters import rtc_internals as ri  # noqa: E402


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    p._data = seq.to_bytes(4, "big", signed=True)  # type: ignore[attr-defined]
    return p


def feed(buffer: object, seqs: list[int]) -> list[int]:
    """The sequence numbers released, in order, as the receiver would get them (one add per packet)."""
    out = []
    for s in seqs:
        _, frame = buffer.add(packet(s))  # type: ignore[attr-defined]
        if frame is not None:
            out.append(int.from_bytes(frame.data, "big", signed=True))
    return out


def test_the_pinned_version_is_the_one_installed() -> None:
    assert aiortc.__version__ == ri.AIORTC_VERSION
    assert ri.missing() is None


def test_install_replaces_the_audio_jitter_buffer_and_lowers_the_sctp_floor() -> None:
    async def build() -> tuple[object, object, float]:
        ri.install()
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
        audio, video = RTCRtpReceiver("audio", dtls), RTCRtpReceiver("video", dtls)
        sctp = RTCSctpTransport(dtls)
        sctp._update_rto(0.001)  # a fast link: the timeout falls to the floor, aiortc's 1 s without kioskd's
        return (audio._RTCRtpReceiver__jitter_buffer, video._RTCRtpReceiver__jitter_buffer,  # type: ignore
                sctp._rto)

    audio, video, rto = asyncio.run(build())
    assert isinstance(audio, ri.AudioJitterBuffer)
    assert type(video) is JitterBuffer  # video keeps aiortc's (NACK, PLI): kioskd sends none
    assert rto == pytest.approx(ri.SCTP_RTO_MIN_S)
    from aiortc import rtcsctptransport
    assert rtcsctptransport.SCTP_RTO_INITIAL == ri.SCTP_RTO_INITIAL_S


def test_aiortcs_own_buffer_still_stalls_after_one_loss() -> None:
    """Why the replacement exists (aiortc#543): one lost packet and aiortc's buffer holds 14 packets for good.
    When this fails, aiortc fixed it and the replacement may go."""
    stock = JitterBuffer(capacity=16, prefetch=4)
    seqs = [s for s in range(200) if s != 50]
    released = feed(stock, seqs)
    assert 199 - released[-1] >= 12


def test_in_order_audio_is_held_prefetch_packets_deep() -> None:
    buffer = ri.AudioJitterBuffer()
    assert feed(buffer, list(range(10))) == list(range(10 - ri.PREFETCH_PACKETS))
    assert buffer.depth == ri.PREFETCH_PACKETS


def test_a_lost_packet_is_stepped_over_and_the_depth_does_not_grow() -> None:
    buffer = ri.AudioJitterBuffer()
    lost = {5, 30, 31, 32, 90}
    seqs = [s for s in range(120) if s not in lost]
    released = feed(buffer, seqs)
    assert released == [s for s in seqs[:-ri.PREFETCH_PACKETS]]
    assert buffer.depth == ri.PREFETCH_PACKETS


def test_reordering_within_the_prefetch_is_put_right_and_a_late_packet_dropped() -> None:
    buffer = ri.AudioJitterBuffer()
    assert feed(buffer, [0, 1, 3, 2, 4, 5]) == [0, 1, 2, 3]
    buffer = ri.AudioJitterBuffer()
    released = feed(buffer, [0, 1, 2, 4, 5, 6, 3, 7])  # 3 comes after 4 went out past it
    assert released == [0, 1, 2, 4, 5]
    assert 3 not in released


def test_sequence_numbers_wrap_and_a_new_stream_starts_again() -> None:
    buffer = ri.AudioJitterBuffer()
    out = feed(buffer, [65533, 65534, 65535, 0, 1, 2])
    assert [s % 65536 for s in out] == [65533, 65534, 65535, 0]
    buffer = ri.AudioJitterBuffer()
    feed(buffer, [10, 11, 12])
    assert feed(buffer, [5000, 5001, 5002, 5003]) == [5000, 5001]  # the sender restarted: nothing held back


def test_install_shortens_the_ice_consent_interval() -> None:
    """A dead peer is known only from aioice's consent checks: kioskd checks more often, and that works only while
    aioice reads the interval (and counts failures against) module globals at each check."""
    from aioice import ice
    ri.install()
    assert ice.CONSENT_INTERVAL == ri.CONSENT_INTERVAL_S
    assert ice.CONSENT_FAILURES == 6  # the failures it takes; the detection time is their product
    names = ice.Connection.query_consent.__code__.co_names
    assert "CONSENT_INTERVAL" in names and "CONSENT_FAILURES" in names


def test_a_stream_putting_together_too_big_a_message_raises_before_holding_more() -> None:
    """aiortc's reassembly is bounded once install() ran: the chunk that takes a message past
    REASSEMBLY_MAX_BYTES drops what was held and raises ConnectionError (DTLS's reader then ends the connection)."""
    from aiortc.rtcsctptransport import SCTP_DATA_FIRST_FRAG, DataChunk, InboundStream

    ri.install()
    stream = InboundStream()
    size, sent = 1200, 0
    with pytest.raises(ConnectionError):
        for tsn in range(10_000):
            chunk = DataChunk(flags=SCTP_DATA_FIRST_FRAG if tsn == 0 else 0)
            chunk.tsn, chunk.stream_id, chunk.stream_seq, chunk.protocol = tsn, 0, 0, 51
            chunk.user_data = b"x" * size
            sent += size
            stream.add_chunk(chunk)
    assert ri.REASSEMBLY_MAX_BYTES < sent <= ri.REASSEMBLY_MAX_BYTES + size
    assert stream.reassembly == [] and stream.kioskd_oversized  # type: ignore[attr-defined]
