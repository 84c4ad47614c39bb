"""The WebSocket edge: open a Realtime session (OpenAI or Azure) and read its frames.

It decides *how* (URL, auth header, keepalive, frame size) and turns websockets' exceptions into kioskd's
error tree, so the turn machine can choose between OFFLINE and FAULT without importing websockets. The API key
goes only into the handshake header: never into a URL, a log line or an exception.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import AsyncIterator
from typing import Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from kioskd.errors import AuthError, ConnectionLost, HandshakeError

#: The largest frame kioskd reads from the server; a larger one ends the session (close 1009) before its payload
#: is read. The largest events the server sends kioskd (reference §5, §11): session.created / session.updated,
#: which echo the instructions (at most core.realtime.INSTRUCTIONS_MAX_BYTES, 32 KiB of UTF-8, at most 192 KiB
#: even if every byte were JSON-escaped as \u00XX) with about 2 KB of configuration; and response.done,
#: response.output_item.done and response.output_audio_transcript.done, which carry a reply's transcript (at
#: most 4,096 output tokens: tens of KB) and never its audio. Audio deltas are a few KB; the most kioskd plays
#: from one, core.realtime.MAX_DELTA_MS (2 s), is 128,000 characters of base64. The one event that carries a
#: whole item's audio, conversation.item.retrieved (why the reference suggests 16 MiB), answers a request
#: kioskd never sends. So: 256 KiB, with room to spare for every event kioskd asks for.
MAX_FRAME_BYTES: Final = 256 * 1024
#: frames websockets buffers before it stops reading the socket (its own default, said here): with the frame
#: cap, at most 4 MiB of a server's frames wait in memory for the reader
MAX_QUEUE_FRAMES: Final = 16
#: No permessage-deflate. websockets inflates every frame of a TCP read before its flow control (max_queue) can
#: pause, so a compressed stream defeats both caps: 3,000 frames of 269 bytes, each inflating to a 200 KB delta,
#: took a kioskd with the 256 KiB cap from 69 to 228 MiB (benchmarks/hostile.py deflate_bomb). Uncompressed,
#: a spoken reply costs about 1.6x the downlink (65 KB/s of base64 instead of about 40): nothing for a kiosk.
COMPRESSION: Final = None

Auth = Literal["auto", "bearer", "api-key"]


def endpoint_of(url: str) -> str:
    """The URL without its query string: what log lines and errors name."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def with_model(url: str, model: str) -> str:
    """``url`` asking for ``model``: its ``model=`` (OpenAI's model, Azure's deployment) replaced or added."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode([*query, ("model", model)]), ""))


def model_of(url: str) -> str:
    """The URL's ``model=`` (OpenAI's model, Azure's deployment), or ""."""
    return next((v for k, v in parse_qsl(urlsplit(url).query) if k == "model" and v), "")


def auth_headers(url: str, auth: Auth, api_key: str | None) -> dict[str, str]:
    """Bearer for OpenAI, ``api-key`` for Azure (``auto`` picks by host). Never the beta header."""
    if not api_key:
        return {}
    if auth == "auto":
        auth = "api-key" if (urlsplit(url).hostname or "").endswith(".openai.azure.com") else "bearer"
    return {"api-key": api_key} if auth == "api-key" else {"Authorization": f"Bearer {api_key}"}


async def open_session(url: str, *, auth: Auth, api_key: str | None, open_timeout_s: float,
                       keepalive_s: float = 20.0) -> ClientConnection:
    """Open the WebSocket, pinging every ``keepalive_s`` and giving up on a link that answers no ping within as
    long. Raises AuthError, HandshakeError, TimeoutError or OSError, each naming the endpoint."""
    endpoint = endpoint_of(url)
    try:
        return await connect(
            url,
            additional_headers=auth_headers(url, auth, api_key),
            max_size=MAX_FRAME_BYTES,
            max_queue=MAX_QUEUE_FRAMES,
            compression=COMPRESSION,
            ping_interval=keepalive_s,
            ping_timeout=keepalive_s,
            open_timeout=open_timeout_s,
            user_agent_header="kioskd",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthError(endpoint, status) from None
        raise HandshakeError(endpoint, status) from None
    except InvalidURI:
        raise HandshakeError(endpoint, 0) from None
    except InvalidHandshake as exc:
        raise ConnectionLost(None, f"{endpoint}: handshake failed: {exc}") from None
    except TimeoutError:
        raise TimeoutError(f"{endpoint}: no handshake within {open_timeout_s:g} s") from None
    except OSError as exc:
        raise ConnectionError(f"{endpoint}: {exc.strerror or exc}") from None


async def frames(conn: ClientConnection) -> AsyncIterator[str | bytes]:
    """Yield server frames until the connection ends; always ends by raising ConnectionLost with the close code."""
    try:
        async for message in conn:
            yield message
    except ConnectionClosed:
        pass
    sent, rcvd = conn.protocol.close_sent, conn.protocol.close_rcvd
    if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:  # websockets refused an oversize frame
        raise ConnectionLost(sent.code, f"the server sent a frame over kioskd's {MAX_FRAME_BYTES // 1024} KiB "
                                        f"limit; kioskd closed the session ({sent.reason})")
    if rcvd is None and sent is not None and sent.reason:  # kioskd gave up on a silent link (keepalive)
        raise ConnectionLost(conn.close_code, f"no close frame from the server; kioskd closed it: {sent.reason}")
    raise ConnectionLost(conn.close_code, conn.close_reason or "")


def unsent_bytes(transport: asyncio.WriteTransport) -> int:
    """Bytes written to a connection's transport that the peer has not yet acknowledged: the transport's buffer
    and the kernel's send queue (SIOCOUTQ: unsent and unacknowledged). 0 when the socket cannot say."""
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            queued += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            pass
    return int(queued)


async def send(conn: ClientConnection, frame: str) -> None:
    """Send one frame; a closed connection is left for ``frames`` to report."""
    try:
        await conn.send(frame)
    except ConnectionClosed:
        pass
