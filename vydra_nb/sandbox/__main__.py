"""``python -m vydra_nb.sandbox``: run a sandbox in the foreground until SIGINT/SIGTERM.

It prints two shell lines first (``export VYDRA_BASE_URL=...`` and ``export VYDRA_API_KEY=...``)
so that ``eval "$(python -m vydra_nb.sandbox | head -2)"`` or copy-paste points a shell at it.
The ``vydra-nb sandbox`` command delegates to :func:`main`.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

from . import start
from .api import FLAVORS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vydra-nb sandbox",
                                     description="Run a local, offline Vydra-compatible API server.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--credits", type=int, default=10_000, help="starting credit balance")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="time compression: job durations and rate-limit windows are divided by it")
    parser.add_argument("--faults", default=None,
                        help="fault spec, e.g. '500=0.1,503=0.1,drop=0.05,slow=0.2,slow_s=2,jobfail=0.1,seed=7'")
    parser.add_argument("--flavor", choices=FLAVORS, default="spec",
                        help="'spec': the reference exactly; 'live': plus the live service's extras")
    parser.add_argument("--key", default=None, help="API key to accept (default: a fresh vydra_sandbox_ key)")
    parser.add_argument("--seed", type=int, default=None, help="seed for job jitter and faults")
    parser.add_argument("--plan", default="creator", choices=["free", "creator", "pro", "enterprise"])
    parser.add_argument("--media-limit-mb", type=float, default=512, help="disk bound for rendered media")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed <= 0:
        print("error: --speed must be > 0", file=sys.stderr)
        return 2
    try:
        sb = start(credits=args.credits, speed=args.speed, faults=args.faults, flavor=args.flavor,
                   port=args.port, api_key=args.key, seed=args.seed, plan=args.plan,
                   media_limit_mb=args.media_limit_mb, verbose=args.verbose)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"export VYDRA_BASE_URL={shlex.quote(sb.url)}")
        print(f"export VYDRA_API_KEY={shlex.quote(sb.api_key)}", flush=True)
        print(f"# Vydra sandbox ({sb.flavor} flavor, speed {sb.speed:g}, {args.credits} credits) "
              f"listening on {sb.root}; Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sb.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
