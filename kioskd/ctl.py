"""kioskctl: send one command to a running kioskd over its control socket and print the reply.

    kioskctl [--socket PATH] [--config FILE]... [--json] press|release|status|stats|devices|selftest|reload

On a terminal the reply is written for a person; otherwise (or with ``--json``) it is the daemon's JSON.

Exit codes: 0 the reply says ok (for ``selftest``: every check passed; for ``reload``: the new config is in
force); 1 an error reply (also kioskd's busy reply, after the client's retries), a failed check or a refused
config; 2 a usage or config error, or a fallback socket directory another user controls; 3 no daemon answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from kioskd import config as config_mod
from kioskd.adapters.control import COMMANDS, request
from kioskd.errors import ConfigError, KioskError

EXIT_OK: Final = 0
EXIT_ERROR_REPLY: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3
#: the self-test plays a tone, listens for a second, opens a session and walks the LED: seconds, not one
SELFTEST_TIMEOUT_S: Final = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kioskctl", description="Control a running kioskd.")
    p.add_argument("--socket", metavar="PATH", help="control socket (default: from the config, else the runtime dir)")
    p.add_argument("--config", metavar="FILE", action="append",
                   help="kioskd config whose control.socket to use (repeat it as for kioskd run: base, overlay)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=None,
                   help="reply timeout (default 5; 30 for selftest)")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON reply (the default off a terminal)")
    p.add_argument("command", choices=COMMANDS,
                   help="press/release: the simulated button; status: phase, connection, cost and audio; "
                        "stats: the latest turns, release → first sound, underruns and cost per turn, by arm; "
                        "devices: the audio devices in use and present; selftest: speaker, microphone, endpoint, "
                        "button and LED checked by the daemon between visitors; reload: apply the config file")
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
    timeout_s = args.timeout or (SELFTEST_TIMEOUT_S if args.command == "selftest" else 5.0)
    try:
        reply = request(path, args.command, timeout_s=timeout_s)
    except KioskError as exc:
        print(f"kioskctl: {exc}", file=sys.stderr)
        return EXIT_NO_DAEMON
    print(json.dumps(reply, indent=2) if args.json or not sys.stdout.isatty() else readable(args.command, reply))
    ok = reply.get("ok") is True and reply.get("passed", True) is not False and reply.get("reloaded", True) is not False
    return EXIT_OK if ok else EXIT_ERROR_REPLY


def readable(cmd: str, reply: dict[str, Any]) -> str:
    """The reply for a person at a terminal."""
    if reply.get("ok") is not True:
        return f"kioskd says: {reply.get('error')}"
    if cmd == "status":
        return _status(reply)
    if cmd == "stats":
        return _stats(reply)
    if cmd == "selftest":
        return "\n".join(f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']:<11} {c['detail']}" for c in reply["checks"])
    if cmd == "devices":
        use = reply.get("in_use") or {}
        lines = [f"in use: {d} {v.get('device')!r} at {v.get('rate_hz')} Hz, {v.get('channels')} ch"
                 for d, v in use.items()]
        return "\n".join([*lines, reply.get("listing", "")])
    if cmd == "reload":
        if not reply.get("reloaded"):
            return f"config refused, the running one stays: {reply.get('error')}"
        restart = reply.get("needs_restart") or []
        return "config reloaded" + (f"; needs a restart to apply: {', '.join(restart)}" if restart else "")
    return f"ok, phase {reply.get('phase')}" if "phase" in reply else "ok"


def _status(r: dict[str, Any]) -> str:
    out = [f"phase      {r.get('phase')}   (link {r.get('link')}"
           + (f", session model {r['session_model']}" if r.get("session_model") else "") + ")"]
    if r.get("visitor"):
        v = r["visitor"]
        out.append(f"visitor    answered by {v['backend']}/{v['model']} ({v['route']})")
    if r.get("fallback"):
        f = r["fallback"]
        out.append(f"fallback   {f['model']}, {'up' if f['up'] else 'DOWN (its key or model was refused)'}")
    cost = r.get("cost") or {}
    budget = cost.get("budget_usd")
    out.append(f"today      ${cost.get('today_usd', 0):.4f} over {cost.get('turns_today', 0)} turns"
               + (f", budget ${budget:.2f}" + (" EXHAUSTED" if cost.get("exhausted") else "") if budget else "")
               + (" (degraded)" if r.get("degraded") else ""))
    turns = r.get("turns") or {}
    out.append("turns      " + (", ".join(f"{k} {v}" for k, v in sorted(turns.items())) or "none yet")
               + (f"; refused presses: {r['rejected']}" if r.get("rejected") else ""))
    last = r.get("last_turn")
    if last:
        out.append(f"last turn  {last.get('outcome')} on {last.get('backend')}/{last.get('model')}, release → first "
                   f"sound {last.get('release_to_first_sound_ms')} ms, ${last.get('cost_usd', 0):.4f}"
                   + (f" ({last['cause']})" if last.get("cause") else ""))
    audio = r.get("audio") or {}
    if audio:
        out.append(f"audio      in {audio.get('input_device')!r} {audio.get('input_rate_hz')} Hz, out "
                   f"{audio.get('output_device')!r} {audio.get('output_rate_hz')} Hz; gaps heard "
                   f"{audio.get('heard_underflows')}")
    for m in r.get("models") or ([r["model"]] if r.get("model") else []):
        state = m.get("shutdown_date") and f"shutdown {m['shutdown_date']}" or m.get("problem") or "no shutdown date"
        out.append(f"model      {m.get('model')}: {state}")
    out.append(f"led        {r.get('led')}, button {r.get('button')}"
               + (", STUCK" if r.get("button_stuck") else "") + f", up {r.get('uptime_s')} s")
    return "\n".join(out)


def _stats(r: dict[str, Any]) -> str:
    out = [f"{'arm':<28}{'turns':>6}{'p50 ms':>8}{'p95 ms':>8}{'gaps':>6}{'$/turn':>9}"]
    for section in ("arms", "ab"):
        if section == "ab" and r.get("ab"):
            out.append("A/B test (drawn visitors only):")
        for name, a in (r.get(section) or {}).items():
            q = a["release_to_first_sound_ms"]
            out.append(f"{name:<28}{a['turns']:>6}{q['p50'] or '-':>8}{q['p95'] or '-':>8}{a.get('underruns', 0):>6}"
                       f"{a['cost_per_turn_usd']:>9.4f}")
    if r.get("today_usd") is not None:
        out.append(f"today ${r['today_usd']:.4f}")
    for t in r.get("last_turns") or []:
        out.append(f"  turn {t.get('turn')}: {t.get('outcome')} on {t.get('backend')}/{t.get('model')}, "
                   f"{t.get('release_to_first_sound_ms')} ms, ${t.get('cost_usd', 0):.4f}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
