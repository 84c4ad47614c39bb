"""The sd_notify protocol, written by hand: no dependency, and easy to test against a real socket.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: an ``AF_UNIX`` datagram socket (a leading ``@``
names the abstract namespace). Each notification is one datagram of newline-separated ``KEY=VALUE`` fields,
e.g. ``READY=1`` + ``STATUS=idle``. Outside systemd (tests, development) there is no socket and ``notify`` does
nothing. Any thread; none of these functions block.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping


def notify(*fields: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``fields`` (``"KEY=VALUE"`` each) as one datagram to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent; False without ``NOTIFY_SOCKET``, with an address form this helper
    does not speak (such as ``vsock:``), or on any OSError, a full socket included (the send never blocks): a
    notification is never worth a crash or a stalled loop. A field
    without ``=`` is a kioskd bug and raises ValueError; newlines inside a value become spaces, because a
    newline would start a new field.
    """
    for field in fields:
        if "=" not in field:
            raise ValueError(f"sd_notify field {field!r} is not KEY=VALUE")
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace: a leading NUL instead of a path
    elif not address.startswith("/"):
        return False
    payload = "\n".join(f.replace("\r", " ").replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(payload, address)
    except OSError:  # including a full socket (BlockingIOError): the loop must never wait on systemd
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] = os.environ) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, in seconds, or None when the watchdog is
    off or meant for another process (``$WATCHDOG_PID`` set and not ours)."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, for ``RELOADING=1`` + ``MONOTONIC_USEC=…`` (systemd ≥ 253 requires it on reload;
    older versions ignore it)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class ServiceStatus:
    """What systemd is told about the service: ``STATUS=`` with each public phase, and ``READY=1`` once the core
    says the kiosk serves, sent again with every status (and every ``tick()``) until a datagram carrying it was
    sent — a READY=1 dropped on a full notify socket is not lost."""

    def __init__(self, on_ready: Callable[[str], None] = lambda phase: None,
                 environ: Mapping[str, str] = os.environ) -> None:
        self._on_ready = on_ready
        self._environ = environ
        self.phase = ""
        self._serving = False
        self._ready_sent = False

    def publish(self, phase: str, serving: bool) -> None:
        self.phase = phase
        if serving and not self._serving:
            self._serving = True
            self._on_ready(phase)
        self._send()

    def tick(self) -> None:
        if self._serving and not self._ready_sent:
            self._send()

    def _send(self) -> None:
        fields = [f"STATUS={self.phase}"]
        if self._serving and not self._ready_sent:
            fields.insert(0, "READY=1")
        if notify(*fields, environ=self._environ) and self._serving:
            self._ready_sent = True
