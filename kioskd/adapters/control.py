"""The control socket: a Unix stream socket speaking one JSON object per line, each way.

Request ``{"cmd": "status"}``; reply ``{"ok": true, ...fields}`` or ``{"ok": false, "error": "<message>"}``.
A well-formed request with an unknown command, or one whose handler fails, gets an error reply and the
connection stays open. A malformed line (not JSON, nested too deeply, not an object, over ``MAX_LINE_BYTES``)
gets an error reply and the connection is closed. Nothing a client sends stops the server.

What a local client can take is bounded: ``MAX_CLIENTS`` connections at once (one more is answered
``{"ok": false, "error": "kioskd is busy: ...", "busy": true}`` and closed at once; ``control.busy`` is logged at
most once a minute), ``IDLE_TIMEOUT_S`` for each request to arrive and be answered, ``MAX_LINE_BYTES`` a request,
and one request per ``REQUEST_GAP_S`` on a connection, so a pipelined flood cannot hold the event loop.

``ControlServer`` runs on the daemon's loop; ``request()`` is the blocking client that kioskctl and the test
harness use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from kioskd import log as log_mod
from kioskd.errors import KioskError

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""``(command, request) -> reply fields``; raising gives an error reply carrying ``str(exc)``."""

COMMANDS: Final = ("press", "release", "status", "stats", "devices", "selftest", "reload")
MAX_LINE_BYTES: Final = 64 * 1024
#: a connection whose next request has not arrived and been answered within this long is closed
IDLE_TIMEOUT_S: Final = 60.0
#: control connections served at once (kioskctl uses one per command); one more gets a busy reply and is closed
MAX_CLIENTS: Final = 16
#: the pause after each reply on a connection: at most 100 requests a second each, and the loop runs in between
REQUEST_GAP_S: Final = 0.01
#: at most one ``control.busy`` line in this long
BUSY_LOG_S: Final = 60.0
#: what kioskctl's client waits before each retry of a refused connection (backlog full, or a busy reply)
RETRY_DELAYS_S: Final = (0.05, 0.1, 0.2, 0.4, 0.8)
#: how long start() waits for an existing socket to answer before calling it stale
PROBE_TIMEOUT_S: Final = 1.0
DIR_MODE: Final = 0o750
SOCKET_MODE: Final = 0o660


class _Malformed(Exception):
    """A request line that cannot be a request: reply, then close the connection."""


class ControlServer:
    """Serves the control socket at ``path`` by calling ``handler`` for each known command.

    Thread affinity: the event loop's thread. ``start()`` raises KioskError when another live process
    answers on ``path``, or when ``path`` exists and is not a socket. ``close()`` closes every connection,
    awaits their tasks and removes the socket file.
    """

    def __init__(self, path: str, handler: Handler, log: log_mod.Logger | None = None) -> None:
        self.path = path
        self._handler = handler
        self._log = log or log_mod.get_logger("kioskd.control")
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._refused = 0  # busy replies since the last control.busy line
        self._busy_logged_s: float | None = None

    async def start(self) -> None:
        parent = os.path.dirname(self.path) or "."
        if not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            os.chmod(parent, DIR_MODE)  # explicit: makedirs' mode is masked by the umask
        await self._clear_stale()
        # backlog: a flood of connects waits in the kernel (or gets EAGAIN, which the client retries) instead of
        # being accepted a hundred at a time
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE_BYTES,
                                                       backlog=MAX_CLIENTS)
        # created under the daemon's umask (0077 under systemd), then widened to the group for kioskctl users
        os.chmod(self.path, SOCKET_MODE)

    async def _clear_stale(self) -> None:
        """Remove a socket left by a process that died; refuse to take over from one that still answers."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise KioskError(f"control socket {self.path}: exists and is not a socket; remove it or set control.socket")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), PROBE_TIMEOUT_S)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except OSError as exc:
            raise KioskError(f"control socket {self.path}: cannot check the existing socket: {exc}") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise KioskError(f"control socket {self.path}: another kioskd is already answering there")

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # ------------------------------------------------------------------------------------------ connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CLIENTS:
            self._refuse(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT_S):  # one deadline to read, answer and send a request
                    reply, close = await self._answer(reader)
                    if reply is not None:
                        await _reply(writer, reply)
                if close:
                    return
                await asyncio.sleep(REQUEST_GAP_S)
        except (TimeoutError, ConnectionError):
            return  # an idle, stuck or vanished client: nothing to answer
        except asyncio.CancelledError:
            # close() cancels and then awaits this task; it ends normally because Python 3.11's stream callback
            # calls task.exception() on it and would log the cancellation as an error with a traceback
            return
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[dict[str, Any] | None, bool]:
        """The reply to the next request, and whether to close the connection after it (None: end of input)."""
        line = b""
        while not line.strip():
            try:
                line = await reader.readline()
            except ValueError:  # the stream's limit: a line over MAX_LINE_BYTES
                return _error(f"request line over {MAX_LINE_BYTES} bytes"), True
            if not line:
                return None, True
        try:
            request = _parse(line)
        except _Malformed as exc:
            return _error(str(exc)), True
        return await self._dispatch(request), False

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Answer a connection beyond MAX_CLIENTS with the busy reply and close it at once; log once a minute."""
        self._refused += 1
        now = time.monotonic()
        if self._busy_logged_s is None or now - self._busy_logged_s >= BUSY_LOG_S:
            self._log.warning("control.busy", limit=MAX_CLIENTS, refused=self._refused)
            self._busy_logged_s, self._refused = now, 0
        reply = _error(f"kioskd is busy: {MAX_CLIENTS} control connections are open, the most it serves; "
                       "try again")
        reply["busy"] = True
        writer.write(json.dumps(reply).encode() + b"\n")  # a few bytes: the socket buffer takes them at once
        writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            return _error(f"request needs a \"cmd\" string (commands: {', '.join(COMMANDS)})")
        if cmd not in COMMANDS:
            return _error(f"unknown command {cmd!r} (commands: {', '.join(COMMANDS)})")
        try:
            fields = await self._handler(cmd, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed command is an error reply, never a dead server
            return _error(str(exc) or type(exc).__name__)
        reply: dict[str, Any] = {"ok": True}
        reply.update((k, v) for k, v in fields.items() if k != "ok")
        return reply


def _parse(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise _Malformed(f"request is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # e.g. 60,000 "[": json's C decoder stops at the interpreter's recursion limit
        raise _Malformed("request is nested too deeply") from exc
    if not isinstance(value, dict):
        raise _Malformed(f"request must be a JSON object, got {type(value).__name__}")
    return value


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    try:
        text = json.dumps(reply, default=str)
    except ValueError as exc:  # e.g. a circular structure from a handler
        text = json.dumps(_error(f"reply not serialisable: {exc}"))
    writer.write(text.encode() + b"\n")
    await writer.drain()


# ---------------------------------------------------------------------------------------------------- client


def request(path: str, cmd: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Send one command and return the daemon's reply (``ok`` true or false). Blocking; any thread.

    A connection the daemon cannot take yet (its backlog is full: EAGAIN) or answers busy is tried again after
    each of ``RETRY_DELAYS_S``; the last busy reply is returned as it is. Raises KioskError when no reply can
    be had: nothing listens at ``path``, access is denied, the backlog stays full, the daemon does not answer
    within ``timeout_s``, or the reply is not a JSON object.
    """
    for delay_s in RETRY_DELAYS_S:
        try:
            reply = _request_once(path, cmd, timeout_s)
        except _Backlogged:
            pass
        else:
            if reply.get("busy") is not True:
                return reply
        time.sleep(delay_s)
    try:
        return _request_once(path, cmd, timeout_s)  # the last try: a busy reply is returned as it is
    except _Backlogged as exc:
        raise KioskError(f"control socket {path}: kioskd takes no more connections now (its backlog stayed "
                         f"full for {sum(RETRY_DELAYS_S):g} s); try again") from exc


class _Backlogged(KioskError):
    """connect() failed with EAGAIN: the listener's backlog is full."""


def _request_once(path: str, cmd: str, timeout_s: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except BlockingIOError as exc:  # a non-blocking (timeout) connect to a full backlog fails with EAGAIN
            raise _Backlogged(str(exc)) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise KioskError(f"no kioskd at {path}: is it running?") from exc
        except PermissionError as exc:
            raise KioskError(f"control socket {path}: permission denied (is this user in the kioskd group?)") from exc
        except OSError as exc:
            raise KioskError(f"control socket {path}: {exc}") from exc
        try:
            with contextlib.suppress(BrokenPipeError):  # the daemon answered busy and closed first: read that
                sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = _read_line(sock)
        except TimeoutError as exc:
            raise KioskError(f"kioskd at {path}: no reply within {timeout_s:g} s") from exc
        except OSError as exc:
            raise KioskError(f"kioskd at {path}: {exc}") from exc
    if not data:
        raise KioskError(f"kioskd at {path}: closed the connection without a reply")
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KioskError(f"kioskd at {path}: reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict):
        raise KioskError(f"kioskd at {path}: reply is not a JSON object")
    return reply


def _read_line(sock: socket.socket) -> bytes:
    """Bytes up to the first newline (or EOF), at most 16 × MAX_LINE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while size <= 16 * MAX_LINE_BYTES:
        chunk = sock.recv(65536)
        if not chunk:
            break
        head, newline, _ = chunk.partition(b"\n")
        chunks.append(head)
        size += len(head)
        if newline:
            break
    return b"".join(chunks)
