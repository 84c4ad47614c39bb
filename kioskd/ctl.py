"""kioskctl: send one command to a running kioskd over its control socket and print the reply.

    kioskctl [--socket PATH] [--config FILE]... press|release|status|stats

Exit codes: 0 the reply says ok; 1 an error reply (also kioskd's busy reply, after the client's retries); 2 a
usage or config error, or a fallback socket directory another user controls; 3 no daemon answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Final

from kioskd import config as config_mod
from kioskd.adapters.control import COMMANDS, request
from kioskd.errors import ConfigError, KioskError

EXIT_OK: Final = 0
EXIT_ERROR_REPLY: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kioskctl", description="Control a running kioskd.")
    p.add_argument("--socket", metavar="PATH", help="control socket (default: from the config, else the runtime dir)")
    p.add_argument("--config", metavar="FILE", action="append",
                   help="kioskd config whose control.socket to use (repeat it as for kioskd run: base, overlay)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0, help="reply timeout (default 5)")
    p.add_argument("command", choices=COMMANDS,
                   help="press/release: the simulated button; status: phase, connection and audio counters; "
                        "stats: release → first sound and cost per turn, by backend and model")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 on a usage error
    path: str
    if args.socket:
        path = args.socket
    else:
        try:
            path = config_mod.control_socket_path(config_mod.load(args.config).control)
        except ConfigError as exc:
            print(f"kioskctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        reply = request(path, args.command, timeout_s=args.timeout)
    except KioskError as exc:
        print(f"kioskctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    print(json.dumps(reply, indent=2))
    return EXIT_OK if reply.get("ok") is True else EXIT_ERROR_REPLY


if __name__ == "__main__":
    sys.exit(main())
