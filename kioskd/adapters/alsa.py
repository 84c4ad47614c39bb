"""alsa-lib's error messages into the structured log, as ``audio.alsa`` lines.

alsa-lib reports a problem by calling its error handler, whose default prints ``ALSA lib FILE:LINE:(FUNCTION)
MESSAGE`` straight to file descriptor 2: into the journal as an unstructured line, outside the log contract
(docs/logging.md). On a misconfigured device it is a flood: one line per rate PortAudio probes. ``install()`` sets
kioskd's own handler with ``snd_lib_error_set_handler`` (libasound.so.2, through ctypes, the very library
PortAudio uses); it writes each message as one ``audio.alsa`` line.

Why not capture file descriptor 2 instead: kioskd's own log lines are written there, and so are Python's
tracebacks, faulthandler's stack dump when the watchdog kills a hung process, and PortAudio's own diagnostics
(``Expression '…' failed in 'src/hostapi/alsa/pa_linux_alsa.c'``). A pipe read by a thread would block every
writer whenever the reader lags and lose a dying process's last words. The handler changes only alsa-lib's error
path: nothing else that reaches stderr, and no PortAudio error code or message, is touched.

Formatting. The handler is variadic (``fmt, ...``) and ctypes cannot declare ``...``. On the ABIs kioskd runs on
(x86-64 System V, AArch64 Linux, 32-bit ARM EABI, i386) integer and pointer arguments after ``fmt`` travel
exactly as fixed ones would, so the callback takes ``EXTRA_ARGS`` pointer-sized arguments after ``fmt`` and hands
them to libc's ``snprintf`` with ``fmt``, which reads only those ``fmt`` names. That is done only when every
conversion in ``fmt`` takes an integer, a character, a string or a pointer (no floating point, no ``%n``, no
64-bit integer on a 32-bit machine, at most ``EXTRA_ARGS`` of them) on a machine listed in ``FORMATTING_ABIS``;
any other message is logged as its format string (``formatted`` false).

Rate: per message site (file and line) and level, the first line, then at most one a minute, carrying how many
were folded into it (``repeats``). Level: debug while kioskd looks for and opens devices (``probing()``) —
PortAudio opens every PCM in the ALSA configuration to list devices and probes rates one by one, and on a Pi many
of those fail by design ("Unknown PCM cards.pcm.rear"); the devices that matter are reported by
``audio.device_opened`` or ``audio.device_missing`` — and warning otherwise (an underrun's ``snd_pcm_recover``, a
device failing while running). (sounddevice points file descriptor 2 at /dev/null while PortAudio first lists the
devices, at its import, so what alsa-lib says in that moment is lost either way.)

Only errors: a build of alsa-lib without NDEBUG (Debian's) also passes its internal debug messages
(``SYSMSG``) to a handler set this way, where before they were printed only with ``LIBASOUND_DEBUG`` set; ``install``
puts that pointer back, so they stay alsa-lib's own business.

Threads: alsa-lib calls the handler on whichever thread met the problem — the loop's, a worker opening a device,
or PortAudio's callback thread (an underrun). ctypes takes the GIL; the handler formats and writes at most one
line, which is what alsa-lib's default handler did there with ``fprintf``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import platform
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

#: pointer-sized arguments the callback reads after ``fmt``; a message with more conversions is not formatted
EXTRA_ARGS: Final = 8
#: machines whose C calling convention passes variadic integer and pointer arguments as fixed ones
FORMATTING_ABIS: Final = frozenset({"x86_64", "amd64", "aarch64", "arm64", "armv6l", "armv7l", "armv8l", "i386",
                                   "i686"})
RATE_WINDOW_S: Final = 60.0
MAX_SITES: Final = 256  # distinct message sites remembered for the rate limit
MESSAGE_MAX: Final = 1024
_IS_64_BIT: Final = ctypes.sizeof(ctypes.c_void_p) == 8
_CONVERSION: Final = re.compile(r"%(?P<flags>[-+ #0']*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+)?)?"
                                r"(?P<length>hh|h|ll|l|j|z|t|q|L)?(?P<conv>.)", re.S)
_SAFE_LENGTHS: Final = frozenset({"", "hh", "h", "l", "z", "t"} | ({"ll", "j", "q"} if _IS_64_BIT else set()))

_HANDLER_TYPE: Final = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.c_char_p, *([ctypes.c_void_p] * EXTRA_ARGS))

_lock = threading.Lock()
_log: Any = None
_handler: Any = None  # the ctypes callback: referenced for as long as alsa-lib may call it
_asound: Any = None
_snprintf: Any = None
_probing = 0
_sites: dict[tuple[bool, bytes, int], list[float]] = {}  # (probing, file, line) -> [last written at, folded since]


def arguments_needed(fmt: str) -> int | None:
    """How many pointer-sized arguments ``fmt`` consumes, or None if it uses a conversion this module will not
    hand to ``snprintf`` (floating point, ``%n``, ``%m``, positional ``%1$``, a length it cannot pass)."""
    needed = 0
    for match in _CONVERSION.finditer(fmt):
        conv = match["conv"]
        if conv == "%" and match.group(0) == "%%":
            continue
        if conv not in "diouxXcsp" or (match["length"] or "") not in _SAFE_LENGTHS or "$" in match.group(0):
            return None
        needed += 1 + (match["width"] == "*") + (match["precision"] == "*")
    return needed


def _format(fmt: bytes, args: tuple[int | None, ...]) -> tuple[str, bool]:
    text = fmt.decode("utf-8", "replace")
    needed = arguments_needed(text)
    if _snprintf is None or needed is None or needed > EXTRA_ARGS:
        return text, False
    buf = ctypes.create_string_buffer(MESSAGE_MAX)
    _snprintf(buf, ctypes.c_size_t(MESSAGE_MAX), fmt, *(ctypes.c_void_p(a) for a in args[:needed]))
    return buf.value.decode("utf-8", "replace"), True


def _on_error(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None,
              *args: int | None) -> None:
    """alsa-lib's error handler (any thread). Never raises: an exception here would go to stderr after all."""
    try:
        now = time.monotonic()
        with _lock:
            site = (_probing > 0, file or b"?", line)  # probing's expected complaints never mute a later warning
            seen = _sites.get(site)
            if seen is not None and now - seen[0] < RATE_WINDOW_S:
                seen[1] += 1
                return
            if len(_sites) >= MAX_SITES:
                _sites.clear()
            repeats = int(seen[1]) if seen is not None else 0
            _sites[site] = [now, 0]
            level = "debug" if site[0] else "warning"
        message, formatted = _format(fmt or b"", args)
        message = message.strip()
        if err and _asound is not None:
            message += f": {_asound.snd_strerror(err).decode('utf-8', 'replace')}"
        fields: dict[str, Any] = {"message": message, "source": f"{site[1].decode('utf-8', 'replace')}:{line}",
                                  "function": (function or b"?").decode("utf-8", "replace")}
        if err:
            fields["code"] = err
        if repeats:
            fields["repeats"] = repeats
        if not formatted:
            fields["formatted"] = False
        if level == "debug":
            _log.debug("audio.alsa", **fields)
        else:
            _log.warning("audio.alsa", **fields)
    except Exception:  # a logging failure must not reach alsa-lib's caller
        pass


def install(log: Any) -> bool:
    """Route alsa-lib's messages to ``log`` (``audio.alsa``). False when there is no libasound (not Linux); safe
    to call again (the newest ``log`` is used). Call it before anything opens audio, so enumeration is covered."""
    global _log, _handler, _asound, _snprintf
    _log = log
    if _handler is not None:
        return True
    try:
        asound = ctypes.CDLL("libasound.so.2")  # the soname PortAudio links: the same, already loaded, library
    except OSError:
        return False
    asound.snd_strerror.restype = ctypes.c_char_p
    asound.snd_strerror.argtypes = [ctypes.c_int]
    asound.snd_lib_error_set_handler.argtypes = [_HANDLER_TYPE]
    if platform.machine().lower() in FORMATTING_ABIS and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)  # the process's own C library
        _snprintf = libc.snprintf
        _snprintf.restype = ctypes.c_int
    _asound = asound
    _handler = _HANDLER_TYPE(_on_error)
    try:  # a build without NDEBUG also hands its internal debug messages to a new handler: keep them as they were
        internal = ctypes.c_void_p.in_dll(asound, "snd_err_msg")
    except ValueError:
        internal = None
    kept = internal.value if internal is not None else None
    asound.snd_lib_error_set_handler(_handler)
    if internal is not None:
        internal.value = kept  # silent unless LIBASOUND_DEBUG asks for them (alsa-lib's own switch)
    # alsa-lib's default again once Python is going away (after sounddevice's own exit hook, registered at its
    # import, later than this): a C caller must never reach into a finalising interpreter
    atexit.register(asound.snd_lib_error_set_handler, _HANDLER_TYPE())  # a NULL handler: the default
    return True


@contextlib.contextmanager
def probing() -> Iterator[None]:
    """While kioskd lists, probes and opens devices: ALSA's messages are expected and logged at debug."""
    global _probing
    with _lock:
        _probing += 1
    try:
        yield
    finally:
        with _lock:
            _probing -= 1
