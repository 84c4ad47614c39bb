"""``kioskd``: run | check-config | devices | simulate.

Exit codes: 0 ok, 1 runtime failure, 78 (EX_CONFIG) a config that cannot work — systemd's
``RestartPreventExitStatus=78`` then stops restarting until a technician fixes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Final

from kioskd import __version__
from kioskd import checks
from kioskd import config as config_mod
from kioskd import log as log_mod
from kioskd.errors import ConfigError, KioskError

EX_CONFIG: Final = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kioskd", description="Push-to-talk voice kiosk daemon for gpt-realtime.")
    p.add_argument("--version", action="version", version=f"kioskd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon (what systemd starts)")
    run.add_argument("--config", action="append", metavar="FILE",
                     help="YAML config file (default: the embedded default); repeat it for a shared base and an "
                          "exhibit's overlay, merged in order, the later file winning")
    check = sub.add_parser("check-config", help="validate config files and print the effective config")
    check.add_argument("files", nargs="*", metavar="config", help="YAML config file(s), merged in order")
    check.add_argument("--config", action="append", metavar="FILE",
                       help="a config file, as for run (repeatable; after any given without --config)")
    sub.add_parser("devices", help="list the audio devices kioskd can open, by name")
    sim = sub.add_parser("simulate", help="run the local Realtime API simulator")
    sim.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket",
                     help="websocket: /v1/realtime; webrtc: POST /v1/realtime/calls and an aiortc peer (needs the "
                          "webrtc extra). Either way the line printed is the ws:// Realtime URL to configure")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="TCP port (0: any free port, printed at start)")
    sim.add_argument("--first-delta-delay-ms", type=float, default=300.0)
    sim.add_argument("--jitter-ms", type=float, default=0.0)
    sim.add_argument("--voice", choices=("speech", "tone"), default="speech")
    sim.add_argument("--api-key-env", metavar="VAR",
                     help="require this environment variable's value as the API key (default: no auth)")
    return p


def _checked(paths: list[str]) -> checks.Checked:
    """Everything ``run`` needs, checked as ``check-config`` and a reload check it; the key is redacted from
    every log line from here on. No path: the embedded default."""
    checked = checks.load(paths)
    for key in (checked.api_key, checked.fallback_key):
        if key:
            log_mod.add_secret(key)
    return checked


def _run(paths: list[str]) -> int:
    checked = _checked(paths)
    log_mod.configure(checked.cfg.log.level, checked.cfg.log.format)
    for warning in checked.warnings:
        log_mod.get_logger("kioskd").warning("config.plaintext_key", cause=warning)
    from kioskd.adapters import alsa

    alsa.install(log_mod.get_logger("kioskd.audio"))  # before PortAudio is loaded: it lists devices at once
    from kioskd.daemon import Daemon

    daemon = Daemon(checked, config_path=paths)
    code = asyncio.run(daemon.run())
    if daemon.restart:  # a missing audio device is back: a fresh process enumerates it (standby.py)
        from kioskd.standby import reexec

        reexec()
    return code


def _simulate(args: argparse.Namespace) -> int:
    import os

    from kioskd.sim import realtime_server
    from kioskd.sim.realtime_server import SimOptions

    serve = realtime_server.serve
    if args.transport == "webrtc":
        from kioskd.adapters.rtc_internals import missing

        problem = missing()
        if problem is not None:
            print(f"kioskd: {problem}", file=sys.stderr)
            return 1
        from kioskd.sim import webrtc_server

        serve = webrtc_server.serve
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    options = SimOptions(api_key=key, first_delta_delay_ms=args.first_delta_delay_ms, jitter_ms=args.jitter_ms,
                         voice=args.voice)
    try:
        asyncio.run(serve(options, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config or [])
        if args.command == "check-config":
            checked = _checked([*args.files, *(args.config or [])])
            for warning in checked.warnings:
                print(f"kioskd: warning: {warning}", file=sys.stderr)
            print(json.dumps(config_mod.describe(checked.cfg), indent=2))
            return 0
        if args.command == "devices":
            from kioskd.adapters.devices import list_devices

            print(list_devices())
            return 0
        return _simulate(args)
    except ConfigError as exc:
        print(f"kioskd: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KioskError as exc:
        print(f"kioskd: {exc}", file=sys.stderr)
        return 1
