"""``python -m vydra_nb.sandbox``: run a sandbox in the foreground until SIGINT/SIGTERM.

It prints two shell lines first (``export VYDRA_BASE_URL=...`` and ``export VYDRA_API_KEY=...``)
so that ``eval "$(python -m vydra_nb.sandbox | head -2)"`` or copy-paste points a shell at it.
The ``vydra-nb sandbox`` command delegates to :func:`main`.

Run by another program (:mod:`vydra_nb.sandbox.process`, which gives a kernel's sandbox a process of
its own), two options tie its life to that parent's: ``--exit-with-stdin`` stops the server when
its stdin reaches end of file (the parent holds the pipe's other end; the operating system closes
it when the parent dies, even by SIGKILL) and reads control lines from it; ``--parent-pid`` also
stops it when it is no longer that process's child (the parent died and it was re-parented).
Control lines on stdin, each answered by one line on stdout: ``add-key KEY`` (accept one more key
for the organization; answers ``key-added KEY``).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading

from . import start
from .api import FLAVORS
from .jobs import DURATION_MODES, PROGRESS_MODES
from .ratelimit import PLANS


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
    parser.add_argument("--plan", default="creator", choices=sorted(PLANS),
                        help="the plan whose rate limits and concurrency cap apply (GET /account/rate-limits)")
    parser.add_argument("--progress", default="provider", choices=PROGRESS_MODES,
                        help="what job views say of progress: 'provider' (the default) mirrors the providers: "
                             "no percentage for kie.ai models, coarse steps for the others")
    parser.add_argument("--durations", default="realistic", choices=DURATION_MODES,
                        help="how job durations vary: 'realistic' spreads them 0.6x-1.8x the model's base")
    parser.add_argument("--idempotency", action="store_true",
                        help="echo and honour Idempotency-Key (the reference documents neither: off by default)")
    parser.add_argument("--media-limit-mb", type=float, default=512, help="disk bound for rendered media")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="no 'listening on' line on stderr")
    parser.add_argument("--exit-with-stdin", action="store_true",
                        help="stop at end of file on stdin, and read control lines from it (for a parent process)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process is no longer our parent (it died)")
    return parser


def _serve_stdin(sb: object, stop: threading.Event, print_lock: threading.Lock) -> None:
    """Read control lines from stdin until end of file (the parent closed it or died), then stop."""
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "add-key" and arg:
                sb.add_key(arg.strip())  # type: ignore[attr-defined]
                answer = f"key-added {arg.strip()}"
            elif command:
                answer = f"error unknown command {command!r}"
            else:
                continue
            with print_lock:
                print(answer, flush=True)
    except (OSError, ValueError):
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.speed <= 0:
        print("error: --speed must be > 0", file=sys.stderr)
        return 2
    try:
        sb = start(credits=args.credits, speed=args.speed, faults=args.faults, flavor=args.flavor,
                   port=args.port, api_key=args.key, seed=args.seed, plan=args.plan,
                   media_limit_mb=args.media_limit_mb, verbose=args.verbose, progress=args.progress,
                   durations=args.durations, idempotency=args.idempotency)
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
    print_lock = threading.Lock()
    try:
        with print_lock:
            print(f"export VYDRA_BASE_URL={shlex.quote(sb.url)}")
            print(f"export VYDRA_API_KEY={shlex.quote(sb.api_key)}", flush=True)
        if not args.quiet:
            print(f"# Vydra sandbox ({sb.flavor} flavor, speed {sb.speed:g}, {args.credits} credits) "
                  f"listening on {sb.root}; Ctrl-C to stop", file=sys.stderr, flush=True)
        if args.exit_with_stdin:
            threading.Thread(target=_serve_stdin, args=(sb, stop, print_lock), name="vydra-sandbox-stdin",
                             daemon=True).start()
        # The parent check is a poll; stdin's end of file (when asked for) is seen at once.
        while not stop.wait(0.25):
            if args.parent_pid is not None and os.getppid() != args.parent_pid:
                break
    finally:
        sb.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
