"""``python -m device_backend`` / ``device-backend``: which device this machine gives, and why.

Exit status: 0 fine; 1 ``--require`` not met; 2 the requested ``--device`` is unavailable or the
arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device-backend",
        description="Probe this machine, choose a torch device (mps, cuda, cpu) and explain every device not chosen.",
    )
    parser.add_argument("--device", default="auto", metavar="REQUEST", help="auto (default), cpu, mps, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the choice and all facts as JSON")
    parser.add_argument(
        "--require",
        choices=("mps", "cuda"),
        help="exit 1 with the reason unless this device type is chosen (for scripts and CI)",
    )
    parser.add_argument("--retries", type=int, default=3, help="in-process probe attempts (default 3)")
    parser.add_argument("--memory-fraction", type=float, default=None, help="scale the memory budget, in (0, 1]")
    parser.add_argument(
        "--no-subprocess", action="store_true", help="skip the fresh-process probe used to explain a failure"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the probe attempts")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    from device_backend import DeviceUnavailableError, configure_environment, setup
    from device_backend.report import format_report

    env_notes = configure_environment()  # before torch is imported by the probe
    try:
        choice = setup(
            args.device,
            retries=args.retries,
            memory_fraction=args.memory_fraction,
            subprocess_probe=not args.no_subprocess,
            apply=False,  # a report changes nothing
        )
    except DeviceUnavailableError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "request": exc.request, "reason": exc.reason, "fix": exc.fix,
                              "available": exc.available}, indent=2))
        print(f"device-backend: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"device-backend: {exc}", file=sys.stderr)
        return 2
    choice.warnings.extend(n for n in env_notes if n not in choice.warnings)  # the watermark note is in both
    print(json.dumps(choice.to_dict(), indent=2) if args.json else format_report(choice))
    if args.require and choice.device_type != args.require:
        reason = choice.reason_for(args.require)
        why = f"{reason.reason} Fix: {reason.fix}" if reason else f"{choice.device} was chosen instead."
        print(f"device-backend: --require {args.require} not met: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
