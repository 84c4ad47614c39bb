"""The pcmu uplink end to end: RealtimeLink against the in-process simulator, a question appended as 8 kHz G.711
µ-law is committed whole, and every frame kioskd sent is a valid GA client event."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from kioskd.adapters.link import LinkOptions, RealtimeLink
from kioskd.core import events as ev
from kioskd.core.pcm import API_RATE_HZ, tone
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
from tests.conftest import run, wait_until
from tests.realtime_schema import validate_client


def test_a_question_sent_as_pcmu_is_committed_whole() -> None:
    """Two questions (1230 ms and 170 ms, in 20 ms chunks) sent as pcmu: each committed at the server lasts the
    held audio within 20 ms, as the same tone."""

    async def main() -> None:
        sim = RealtimeSimulator(SimOptions(voice="tone", reply_ms=100))
        await sim.start()
        posted: list[ev.Input] = []
        link = RealtimeLink(LinkOptions(sim.url), posted.append)
        link.start()
        try:
            await wait_until(lambda: any(isinstance(p, ev.SessionCreated) for p in posted), "session.created")
            link.send(ev.ConfigureSession("cfg_1", "marin", "Be brief.", input_format="pcmu"))
            await wait_until(lambda: any(isinstance(p, ev.SessionUpdated) for p in posted), "session.updated")
            for n, held_ms in enumerate((1230, 170), start=1):
                question = tone(300, held_ms, amplitude=0.5)
                link.send(ev.StartQuestion())
                for start in range(0, question.size, 480):
                    link.send(ev.AppendAudio(question[start:start + 480]))
                    await asyncio.sleep(0)
                link.send(ev.Commit())
                await wait_until(lambda: len(sim.committed_audio) == n, "the commit")
                heard = sim.committed_audio[-1]
                assert abs(heard.size - question.size) * 1000 / API_RATE_HZ <= 20
                assert sim.committed_formats[-1] == "audio/pcmu"
                m = min(heard.size, question.size) - 1200
                corr = np.corrcoef(question[1200:m].astype(float), heard[1200:m].astype(float))[0, 1]
                assert corr > 0.99
            assert not [p for p in posted if isinstance(p, (ev.ServerError, ev.BadEvent))]
            for event in sim.client_events:
                validate_client(event)
            appended = [e for e in sim.client_events if e["type"] == "input_audio_buffer.append"]
            sent = sum(len(base64.b64decode(e["audio"])) for e in appended)
            assert sent == (1230 + 170) * 8  # one byte a sample at 8 kHz: a sixth of PCM16's 48 bytes a ms
        finally:
            await link.close()
            await sim.close()

    run(main())


def test_unsent_bytes_counts_what_the_peer_has_not_taken() -> None:
    """A peer that reads nothing: what was written and is not yet in its receive buffer is counted (the transport's
    buffer and the kernel's send queue); once the peer reads it all, nothing is."""
    from kioskd.adapters.realtime_ws import unsent_bytes

    async def main() -> None:
        accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        reader, peer = await accepted.get()
        assert unsent_bytes(writer.transport) == 0
        blob = b"x" * (8 << 20)  # more than loopback's receive and send buffers together
        writer.write(blob)
        await asyncio.sleep(0.2)
        assert 0 < unsent_bytes(writer.transport) <= len(blob)
        await reader.readexactly(len(blob))
        await writer.drain()
        await wait_until(lambda: unsent_bytes(writer.transport) == 0, "the peer's acknowledgements")
        writer.close()
        peer.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_a_commit_reports_how_far_behind_the_question_is() -> None:
    """At each commit the link says how much of the question had not yet reached the server: on loopback with a
    server reading as fast as it comes, little of it."""

    async def main() -> None:
        async with RealtimeSimulator(SimOptions(voice="tone", reply_ms=100)) as sim:
            posted: list[ev.Input] = []
            link = RealtimeLink(LinkOptions(sim.url), posted.append)
            link.start()
            await wait_until(lambda: any(isinstance(p, ev.SessionCreated) for p in posted), "session.created")
            link.send(ev.StartQuestion())
            question = tone(300, 500)
            for start in range(0, question.size, 480):
                link.send(ev.AppendAudio(question[start:start + 480]))
                await asyncio.sleep(0.02)
            link.send(ev.Commit())
            backlog = [p for p in posted if isinstance(p, ev.UplinkBacklog)]
            assert len(backlog) == 1 and 0 <= backlog[0].backlog_ms < 100
            await link.close()

    run(main())
