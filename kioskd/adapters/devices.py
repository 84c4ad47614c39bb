"""Audio device selection: by name, at a native rate, with listings for errors and ``kioskd devices``.

Devices are chosen by name or case-insensitive name substring, never by index: ALSA card numbers change with
plug order (reference/pi-audio.md §2.4). The rate is probed, never taken from ``default_samplerate``, which is
not the native rate (§2.5). Everything here blocks inside PortAudio: the daemon calls it via
``asyncio.to_thread``.

sounddevice is imported inside the functions: PortAudio enumerates devices when it is imported, so importing
this module must not do it (tests start the sound server first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from kioskd.errors import DeviceError

Kind = Literal["input", "output"]

#: 48000 first: 48000 → 24000 is an exact 2:1 ratio; 24000 last, as hw: devices rarely run at it
CANDIDATE_RATES_HZ: Final = (48000, 44100, 32000, 16000, 24000)
DTYPE: Final = "int16"


@dataclass(frozen=True)
class DeviceChoice:
    """A device to open: its PortAudio index (valid for this process only), full name, rate and channels;
    ``others``: further devices the name matched (the first in PortAudio's order was chosen)."""

    index: int
    name: str
    rate_hz: int
    channels: int
    others: tuple[str, ...] = ()


def _sd() -> Any:
    import sounddevice  # type: ignore[import-untyped]

    return sounddevice


def _channels_key(kind: Kind) -> str:
    return "max_input_channels" if kind == "input" else "max_output_channels"


def _devices_of(kind: Kind) -> list[dict[str, Any]]:
    key = _channels_key(kind)
    return [dict(d) for d in _sd().query_devices() if d[key] > 0]


def match_devices(query: str, names: Iterable[str]) -> list[str]:
    """The names a query selects: an exact name wins (case first, then case-insensitive); else every name
    containing the query case-insensitively. Pure, so the rule is testable without PortAudio."""
    names = list(names)
    if query in names:
        return [query]
    folded = query.casefold()
    exact = [n for n in names if n.casefold() == folded]
    if exact:
        return exact
    return [n for n in names if folded in n.casefold()]


def find_device(query: str | None, kind: Kind) -> tuple[int, tuple[str, ...]]:
    """The PortAudio index of the ``kind`` device named by ``query`` (None or blank: the system default), and the
    names of any further devices it matched: several matches (a second identical USB adapter plugged in) choose
    the first in PortAudio's order, deterministically, rather than refuse.

    Raises DeviceError when none matches; the message lists the devices present.
    """
    sd = _sd()
    label = query if query is not None else "default"
    if query is None or not query.strip():
        try:
            return int(sd.query_devices(kind=kind)["index"]), ()
        except (ValueError, sd.PortAudioError) as exc:
            raise DeviceError("default", kind, f"no default {kind} device ({exc}); {_listing(kind)}") from None
    devices = _devices_of(kind)
    names = match_devices(query.strip(), (d["name"] for d in devices))
    chosen = [d for d in devices if d["name"] in names]
    if not chosen:
        raise DeviceError(label, kind, f"no {kind} device matches; {_listing(kind)}")
    return int(chosen[0]["index"]), tuple(str(d["name"]) for d in chosen[1:])


def first_supported_rate(supported: Callable[[int], bool],
                         candidates: Iterable[int] = CANDIDATE_RATES_HZ) -> int | None:
    """The first candidate rate ``supported`` accepts, or None. Pure: the PortAudio check is passed in."""
    for rate_hz in candidates:
        if supported(rate_hz):
            return rate_hz
    return None


def _supports(device: int, kind: Kind, channels: int) -> Callable[[int], bool]:
    sd = _sd()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings

    def supported(rate_hz: int) -> bool:
        try:
            check(device=device, channels=channels, dtype=DTYPE, samplerate=rate_hz)
        except (sd.PortAudioError, ValueError):
            return False
        return True

    return supported


def probe_rate(device: int, kind: Kind, channels: int) -> int:
    """The first native rate of 48000, 44100, 32000, 16000, 24000 the device accepts for int16 ``channels``."""
    rate_hz = first_supported_rate(_supports(device, kind, channels))
    if rate_hz is None:
        name = _name_of(device)
        tried = ", ".join(str(r) for r in CANDIDATE_RATES_HZ)
        raise DeviceError(name, kind, f"accepts none of {tried} Hz for {channels}-channel int16")
    return rate_hz


def choose(query: str | None, kind: Kind) -> DeviceChoice:
    """Find the device and settle its rate and channel count: mono if it takes mono, else stereo (mixed down on
    input, duplicated on output). Blocking: call it via ``asyncio.to_thread``."""
    index, others = find_device(query, kind)
    name = _name_of(index)
    max_channels = int(_sd().query_devices(index)[_channels_key(kind)])
    for channels in (1, 2):
        if channels > max_channels:
            break
        rate_hz = first_supported_rate(_supports(index, kind, channels))
        if rate_hz is not None:
            return DeviceChoice(index=index, name=name, rate_hz=rate_hz, channels=channels, others=others)
    tried = ", ".join(str(r) for r in CANDIDATE_RATES_HZ)
    raise DeviceError(name, kind, f"accepts none of {tried} Hz as int16 mono or stereo")


def _name_of(index: int) -> str:
    return str(_sd().query_devices(index)["name"])


def _listing(kind: Kind) -> str:
    names = [d["name"] for d in _devices_of(kind)]
    return f"{kind} devices present: " + (", ".join(repr(n) for n in names) if names else "none")


def list_devices() -> str:
    """A readable table of input and output devices, system defaults marked with ``*``."""
    sd = _sd()
    hostapis = [h["name"] for h in sd.query_hostapis()]
    lines: list[str] = []
    for kind in ("input", "output"):
        try:
            default = int(sd.query_devices(kind=kind)["index"])
        except (ValueError, sd.PortAudioError):
            default = -1
        devices = _devices_of(kind)
        lines.append(f"{kind} devices (choose by name or a unique part of it):")
        if not devices:
            lines.append("  (none)")
        width = max((len(d["name"]) for d in devices), default=0)
        for d in devices:
            mark = "*" if d["index"] == default else " "
            lines.append(f"  {mark} {d['name']:<{width}}  {hostapis[d['hostapi']]}, "
                         f"{d[_channels_key(kind)]} ch, reports {d['default_samplerate']:.0f} Hz")
    lines.append("* = system default; the rate used is probed when the device is opened")
    return "\n".join(lines)


def probe(queries: dict[Kind, str | None]) -> dict[str, str | None]:
    """For each kind, None if ``choose`` would find the device now, else why not. Run it in a fresh process
    (``python -m kioskd.adapters.devices probe JSON``): PortAudio's device list is frozen at import, so only a
    new process sees a device plugged in since."""
    out: dict[str, str | None] = {}
    for kind, query in queries.items():
        try:
            choose(query, kind)
        except DeviceError as exc:
            out[kind] = exc.cause
        else:
            out[kind] = None
    return out


if __name__ == "__main__":  # the probe's child process: argv ``probe '{"input": ..., "output": ...}'``
    import json
    import sys

    if sys.argv[1:2] != ["probe"] or len(sys.argv) != 3:
        sys.exit("usage: python -m kioskd.adapters.devices probe JSON")
    print(json.dumps(probe(json.loads(sys.argv[2]))))
