"""kioskd.errors: classify() (the one place that decides "retry" or "fatal") on every branch, each exception's
str() (the whole log line: subject first, lower case, never a secret) and the builtin types each one mixes in."""

from __future__ import annotations

import inspect
import socket

import pytest

from kioskd.errors import (
    RETRY_CLOSE_CODES,
    AuthError,
    ConfigError,
    ConnectionLost,
    DeviceError,
    HandshakeError,
    KioskError,
    LocalProtocolError,
    RemoteProtocolError,
    ServerRejected,
    Verdict,
    classify,
)

ENDPOINT = "wss://api.openai.com/v1/realtime"


def verdicts(cases: dict[str, tuple[BaseException, Verdict]]) -> pytest.MarkDecorator:
    """Parametrize (exc, verdict) over ``cases``, each case named by its key."""
    return pytest.mark.parametrize(("exc", "verdict"), list(cases.values()), ids=list(cases))


# ------------------------------------------------------------------------------------------------ classify


@verdicts({
    "OSError": (OSError("network is unreachable"), "retry"),
    "ConnectionError": (ConnectionError(f"{ENDPOINT}: connection refused"), "retry"),
    "ConnectionResetError": (ConnectionResetError(104, "connection reset by peer"), "retry"),
    "ConnectionRefusedError": (ConnectionRefusedError(111, "connection refused"), "retry"),
    "BrokenPipeError": (BrokenPipeError(32, "broken pipe"), "retry"),
    "gaierror": (socket.gaierror(-3, "temporary failure in name resolution"), "retry"),
    "TimeoutError": (TimeoutError(f"{ENDPOINT}: no handshake within 10 s"), "retry"),
})
def test_network_and_timeout_failures_are_retried(exc: BaseException, verdict: Verdict) -> None:
    """A builtin OSError (resets, refusals, DNS) or TimeoutError is worth a quick retry."""
    assert classify(exc) == verdict


@verdicts({
    "401": (AuthError(ENDPOINT, 401), "fatal"),
    "403": (AuthError(ENDPOINT, 403), "fatal"),
})
def test_refused_credentials_are_fatal(exc: BaseException, verdict: Verdict) -> None:
    """An AuthError is fatal, although it is a PermissionError (an OSError, which is otherwise retried)."""
    assert classify(exc) == verdict


@verdicts({
    "400": (HandshakeError(ENDPOINT, 400), "fatal"),
    "403": (HandshakeError(ENDPOINT, 403), "fatal"),
    "404": (HandshakeError(ENDPOINT, 404), "fatal"),
    "429": (HandshakeError(ENDPOINT, 429), "retry"),
    "500": (HandshakeError(ENDPOINT, 500), "retry"),
    "502": (HandshakeError(ENDPOINT, 502), "retry"),
    "503": (HandshakeError(ENDPOINT, 503), "retry"),
    "504": (HandshakeError(ENDPOINT, 504), "retry"),
    "401": (HandshakeError(ENDPOINT, 401), "retry"),  # realtime_ws raises AuthError for 401/403, never this
    "408": (HandshakeError(ENDPOINT, 408), "retry"),
    "0-invalid-uri": (HandshakeError(ENDPOINT, 0), "retry"),
})
def test_a_refused_handshake_is_fatal_only_for_400_403_404(exc: BaseException, verdict: Verdict) -> None:
    """HTTP 400, 403 and 404 on the upgrade are fatal; every other status (429, 5xx, ...) is retried."""
    assert classify(exc) == verdict


@verdicts({
    "invalid_api_key": (ServerRejected("invalid_api_key", "Incorrect API key provided"), "fatal"),
    "insufficient_quota": (ServerRejected("insufficient_quota", "You exceeded your current quota"), "fatal"),
    "model_not_found": (ServerRejected("model_not_found", "The model does not exist"), "fatal"),
    "missing_model": (ServerRejected("missing_model", "Missing model"), "fatal"),
    "unknown_parameter": (ServerRejected("unknown_parameter", "Unknown parameter: 'session.foo'"), "fatal"),
    "beta_api_shape_disabled": (ServerRejected("beta_api_shape_disabled", "The beta shape is disabled"), "fatal"),
    "rate_limit_exceeded": (ServerRejected("rate_limit_exceeded", "Rate limit reached"), "retry"),
    "server_error": (ServerRejected("server_error", "The server had an error"), "retry"),
    "unlisted-code": (ServerRejected("some_new_code", "Something new"), "retry"),
    "no-code-only-type": (ServerRejected(None, "Invalid request", "evt_1", "invalid_request_error"), "retry"),
    "no-code-no-type": (ServerRejected(None, "Something went wrong"), "retry"),
})
def test_server_errors_are_fatal_only_for_codes_no_retry_can_fix(exc: BaseException, verdict: Verdict) -> None:
    """A server error code that means "this configuration cannot work" is fatal; any other code, or none, is
    retried."""
    assert classify(exc) == verdict


@verdicts({
    "none": (ConnectionLost(None), "retry"),
    **{str(code): (ConnectionLost(code, "going away"), "retry") for code in (1001, 1005, 1006, 1011, 1012, 1013, 1015)},
    "3000": (ConnectionLost(3000, "invalid_api_key"), "fatal"),
    "4000": (ConnectionLost(4000, "invalid_request_error"), "fatal"),
    "1000-normal": (ConnectionLost(1000), "retry"),
    "1002-protocol-error": (ConnectionLost(1002), "retry"),
    "1008-policy": (ConnectionLost(1008, "policy violation"), "retry"),
    "1009-too-big": (ConnectionLost(1009), "retry"),
    "3001": (ConnectionLost(3001), "retry"),
    "4001": (ConnectionLost(4001), "retry"),
})
def test_a_lost_connection_is_fatal_only_for_close_3000_and_4000(exc: BaseException, verdict: Verdict) -> None:
    """Close 3000 (bad key) and 4000 (a kioskd or config bug) are fatal, although ConnectionLost is an OSError;
    no close code, the recoverable codes and every other code are retried."""
    assert classify(exc) == verdict


def test_the_recoverable_close_codes_are_the_documented_ones() -> None:
    """The recoverable close codes are exactly DESIGN §6's: 1001, 1005, 1006, 1011, 1012, 1013, 1015."""
    assert RETRY_CLOSE_CODES == {1001, 1005, 1006, 1011, 1012, 1013, 1015}


@verdicts({
    "ConfigError": (ConfigError("kioskd.yaml", 3, "audio.block_ms", "must be a number"), "fatal"),
    "LocalProtocolError": (LocalProtocolError("press in phase offline has no row"), "fatal"),
    "DeviceError": (DeviceError("USB Audio", "input", "stream finished"), "retry"),
    "RemoteProtocolError": (RemoteProtocolError("response.output_audio.delta", "bad base64"), "retry"),
})
def test_kiosk_errors_that_need_a_fix_are_fatal(exc: BaseException, verdict: Verdict) -> None:
    """A config error or a kioskd bug is fatal, although they are a ValueError and an AssertionError; a device
    error (an OSError) and malformed server data are retried."""
    assert classify(exc) == verdict


@verdicts({
    "ValueError": (ValueError("could not convert string to float"), "retry"),
    "RuntimeError": (RuntimeError("event loop is closed"), "retry"),
    "KeyError": (KeyError("delta"), "retry"),
    "AssertionError": (AssertionError("not a LocalProtocolError"), "retry"),
    "PermissionError": (PermissionError(13, "permission denied"), "retry"),
    "Exception": (Exception("anything"), "retry"),
    "KioskError": (KioskError("a bare base"), "retry"),
})
def test_anything_else_is_retried(exc: BaseException, verdict: Verdict) -> None:
    """Any other exception, builtin or kioskd's bare base (even an AssertionError or PermissionError that is not
    kioskd's own), is retried: fatal is only ever decided by name."""
    assert classify(exc) == verdict


# ------------------------------------------------------------------------------------------------ messages


@pytest.mark.parametrize(("exc", "text"), [
    (ConfigError("kioskd.yaml", 14, "audio.output_devcie", "unknown key", "did you mean audio.output_device?"),
     "kioskd.yaml:14: audio.output_devcie: unknown key (did you mean audio.output_device?)"),
    (ConfigError("kioskd.yaml", 3, "audio.block_ms", "must be a number"),
     "kioskd.yaml:3: audio.block_ms: must be a number"),
    (ConfigError("/etc/kioskd/kioskd.yaml", None, "realtime", "missing section"),
     "/etc/kioskd/kioskd.yaml: realtime: missing section"),
    (ConfigError("kioskd.yaml", 7, None, "not valid yaml"), "kioskd.yaml:7: not valid yaml"),
    (ConfigError("kioskd.yaml", None, None, "no such file", "copy config/kioskd.yaml"),
     "kioskd.yaml: no such file (copy config/kioskd.yaml)"),
], ids=["line-key-hint", "line-key", "key-no-line", "line-no-key", "file-hint"])
def test_a_config_error_names_file_line_and_key_first(exc: ConfigError, text: str) -> None:
    """A ConfigError reads "file:line: key: problem (hint)", leaving out whichever of line, key, hint is None."""
    assert str(exc) == text


@pytest.mark.parametrize(("exc", "text"), [
    (RemoteProtocolError("response.output_audio.delta", "bad base64"),
     "server event response.output_audio.delta: bad base64"),
    (ServerRejected("rate_limit_exceeded", "Rate limit reached", "evt_9", "rate_limit_error"),
     "server error rate_limit_exceeded: Rate limit reached"),
    (ServerRejected(None, "Invalid request", "evt_9", "invalid_request_error"),
     "server error invalid_request_error: Invalid request"),
    (ServerRejected(None, "Something went wrong"), "server error unknown: Something went wrong"),
    (AuthError(ENDPOINT, 401), f"{ENDPOINT}: authentication refused (HTTP 401); check realtime.api_key_file"),
    (HandshakeError(ENDPOINT, 429), f"{ENDPOINT}: handshake refused with HTTP 429"),
    (ConnectionLost(None), "connection lost (no close code)"),
    (ConnectionLost(1006, "keepalive ping timeout"), "connection lost (close code 1006): keepalive ping timeout"),
    (ConnectionLost(1000, ""), "connection lost (close code 1000)"),
    (DeviceError("USB Audio", "input", "no callback for 2.0 s"), "input device 'USB Audio': no callback for 2.0 s"),
], ids=["remote-protocol", "server-code", "server-type-only", "server-neither", "auth", "handshake",
        "lost-no-code", "lost-code-reason", "lost-code-no-reason", "device"])
def test_each_message_is_the_whole_log_line_subject_first(exc: KioskError, text: str) -> None:
    """Each str() is exactly the log line: the subject (event, code, endpoint, connection, device) first, then
    the problem in lower case; the server's own message is passed through as it came."""
    assert str(exc) == text
    assert exc.args == (text,)


@pytest.mark.parametrize("cls", [AuthError, HandshakeError])
def test_endpoint_errors_carry_endpoint_and_status_and_no_key(cls: type[AuthError] | type[HandshakeError]) -> None:
    """AuthError and HandshakeError take only the endpoint and the status: no parameter or field can hold the
    API key, and the message names both."""
    assert list(inspect.signature(cls).parameters) == ["endpoint", "status"]
    exc = cls(ENDPOINT, 403)
    assert vars(exc) == {"endpoint": ENDPOINT, "status": 403}
    assert str(exc).startswith(f"{ENDPOINT}: ") and "HTTP 403" in str(exc)


# ------------------------------------------------------------------------------------------------ the tree


@pytest.mark.parametrize(("cls", "bases"), [
    (ConfigError, (KioskError, ValueError)),
    (LocalProtocolError, (KioskError, AssertionError)),
    (RemoteProtocolError, (KioskError,)),
    (ServerRejected, (KioskError,)),
    (AuthError, (KioskError, PermissionError)),
    (HandshakeError, (KioskError, ConnectionError)),
    (ConnectionLost, (KioskError, ConnectionError)),
    (DeviceError, (KioskError, OSError)),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_each_error_mixes_in_its_builtin_type(cls: type[KioskError], bases: tuple[type[BaseException], ...]) -> None:
    """Each exception derives from KioskError and exactly the builtin type DESIGN §6 gives it, so a caller's
    ``except ValueError`` / ``PermissionError`` / ``ConnectionError`` / ``OSError`` / ``AssertionError`` catches
    it too."""
    assert cls.__bases__ == bases
    assert issubclass(KioskError, Exception) and not issubclass(KioskError, OSError)


@pytest.mark.parametrize(("exc", "builtin"), [
    (ConfigError("kioskd.yaml", 1, "log.level", "unknown level"), ValueError),
    (LocalProtocolError("no row"), AssertionError),
    (AuthError(ENDPOINT, 401), PermissionError),
    (AuthError(ENDPOINT, 401), OSError),
    (HandshakeError(ENDPOINT, 503), ConnectionError),
    (ConnectionLost(1006), ConnectionError),
    (ConnectionLost(1006), OSError),
    (DeviceError("USB Audio", "output", "device unplugged"), OSError),
], ids=["config-valueerror", "local-assertion", "auth-permission", "auth-oserror", "handshake-connection",
        "lost-connection", "lost-oserror", "device-oserror"])
def test_an_except_clause_for_the_builtin_catches_it(exc: KioskError, builtin: type[BaseException]) -> None:
    """Raised, each error is caught by an ``except`` for its builtin type (and for KioskError)."""
    with pytest.raises(builtin) as caught:
        raise exc
    assert caught.value is exc and isinstance(caught.value, KioskError)
