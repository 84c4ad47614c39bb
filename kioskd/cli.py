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
from kioskd import config as config_mod
from kioskd import log as log_mod
from kioskd.errors import ConfigError, KioskError

EX_CONFIG: Final = 78


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kioskd", description="Push-to-talk voice kiosk daemon for gpt-realtime.")
    p.add_argument("--version", action="version", version=f"kioskd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon (what systemd starts)")
    run.add_argument("--config", help="YAML config file (default: the embedded default)")
    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("config", nargs="?", help="YAML config file (default: the embedded default)")
    sub.add_parser("devices", help="list the audio devices kioskd can open, by name")
    sim = sub.add_parser("simulate", help="run the local Realtime API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="TCP port (0: any free port, printed at start)")
    sim.add_argument("--first-delta-delay-ms", type=float, default=300.0)
    sim.add_argument("--jitter-ms", type=float, default=0.0)
    sim.add_argument("--voice", choices=("speech", "tone"), default="speech")
    sim.add_argument("--api-key-env", metavar="VAR",
                     help="require this environment variable's value as the API key (default: no auth)")
    return p


def _load(path: str | None) -> config_mod.KioskConfig:
    return config_mod.load(path)


def _run(path: str | None) -> int:
    cfg = _load(path)
    log_mod.configure(cfg.log.level, cfg.log.format)
    from kioskd.adapters import alsa

    alsa.install(log_mod.get_logger("kioskd.audio"))  # before PortAudio is loaded: it lists devices at once
    api_key = config_mod.read_api_key(cfg.realtime)
    if api_key:
        log_mod.add_secret(api_key)
    if cfg.realtime.url and cfg.realtime.url.startswith("wss://") and not api_key:
        raise ConfigError(cfg.source, None, "realtime.api_key_file",
                          "no API key: set realtime.api_key_file, systemd LoadCredential=openai_api_key, "
                          "or OPENAI_API_KEY")
    from kioskd.daemon import Daemon

    daemon = Daemon(cfg, api_key=api_key, config_path=path)
    code = asyncio.run(daemon.run())
    if daemon.restart:  # a missing audio device is back: a fresh process enumerates it (standby.py)
        from kioskd.standby import reexec

        reexec()
    return code


def _simulate(args: argparse.Namespace) -> int:
    import os

    from kioskd.sim.realtime_server import SimOptions, serve

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
            return _run(args.config)
        if args.command == "check-config":
            cfg = _load(args.config)
            print(json.dumps(config_mod.describe(cfg), indent=2))
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
