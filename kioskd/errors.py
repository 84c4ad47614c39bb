"""The one exception tree of kioskd, and the one function that classifies failures.

Each exception's ``str()`` is written to be the whole log line for that failure: subject first, then the
problem, lower case, never a secret.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["retry", "fatal"]


class KioskError(Exception):
    """Base of every error kioskd raises on purpose."""


class ConfigError(KioskError, ValueError):
    """A config file is unusable: names the file, the line and the key."""

    def __init__(self, file: str, line: int | None, key: str | None, problem: str, hint: str | None = None):
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        subject = f"{where}: {self.key}" if self.key else where
        text = f"{subject}: {self.problem}"
        return f"{text} ({self.hint})" if self.hint else text


class LocalProtocolError(KioskError, AssertionError):
    """kioskd broke its own turn table or the protocol: a bug in kioskd."""


class RemoteProtocolError(KioskError):
    """The server sent data kioskd cannot use (malformed JSON, bad base64, missing fields)."""

    def __init__(self, event_type: str, reason: str):
        self.event_type = event_type
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"server event {self.event_type}: {self.reason}"


class ServerRejected(KioskError):
    """A server ``error`` event (or a close that carried one)."""

    def __init__(self, code: str | None, message: str, event_id: str | None = None, error_type: str | None = None):
        self.code = code
        self.message = message
        self.event_id = event_id
        self.error_type = error_type
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"server error {self.code or self.error_type or 'unknown'}: {self.message}"


class AuthError(KioskError, PermissionError):
    """The endpoint refused the credentials (HTTP 401/403, close 3000). Never carries the key."""

    def __init__(self, endpoint: str, status: int):
        self.endpoint = endpoint
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.endpoint}: authentication refused (HTTP {self.status}); check realtime.api_key_file"


class HandshakeError(KioskError, ConnectionError):
    """The endpoint answered the WebSocket upgrade with an HTTP error other than auth (429, 5xx, 404...)."""

    def __init__(self, endpoint: str, status: int):
        self.endpoint = endpoint
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.endpoint}: handshake refused with HTTP {self.status}"


class ConnectionLost(KioskError, ConnectionError):
    """The WebSocket closed or broke: carries the close code and reason, if any."""

    def __init__(self, close_code: int | None, reason: str = ""):
        self.close_code = close_code
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        code = "no close code" if self.close_code is None else f"close code {self.close_code}"
        return f"connection lost ({code}){': ' + self.reason if self.reason else ''}"


class DeviceError(KioskError, OSError):
    """An audio device is missing, busy or lost."""

    def __init__(self, device: str, direction: str, cause: str):
        self.device = device
        self.direction = direction
        self.cause = cause
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.direction} device {self.device!r}: {self.cause}"


#: close codes after which a new session is worth trying (openai-python's recoverable set)
RETRY_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})
#: server error codes that mean "this configuration cannot work": retry only slowly
FATAL_SERVER_CODES = frozenset(
    {"invalid_api_key", "insufficient_quota", "model_not_found", "missing_model", "unknown_parameter",
     "beta_api_shape_disabled"}
)


def classify(exc: BaseException) -> Verdict:
    """Decide whether a failure is worth a quick retry ("retry") or needs a fix ("fatal").

    This is the one place that decides. It reads only kioskd's own exception fields and builtin types.
    """
    if isinstance(exc, AuthError):
        return "fatal"
    if isinstance(exc, HandshakeError):
        return "fatal" if exc.status in (400, 403, 404) else "retry"
    if isinstance(exc, ServerRejected):
        return "fatal" if exc.code in FATAL_SERVER_CODES else "retry"
    if isinstance(exc, ConnectionLost):
        if exc.close_code is None or exc.close_code in RETRY_CLOSE_CODES:
            return "retry"
        if exc.close_code in (3000, 4000):
            return "fatal"
        return "retry"
    if isinstance(exc, (ConfigError, LocalProtocolError)):
        return "fatal"
    if isinstance(exc, (OSError, TimeoutError, RemoteProtocolError)):
        return "retry"
    return "retry"
