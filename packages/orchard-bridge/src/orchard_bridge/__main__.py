"""Command line: ``orchard-bridge [report] [--json] [--repo PATH] [--device DEV]`` and ``orchard-bridge build``."""

from __future__ import annotations

import argparse
import json
import sys


def _report_text(status) -> str:
    lines = [f"orchard-bridge: {status.reason}", ""]
    lines.append(f"device        {status.device}   torch {status.torch_version}   mode {status.mode}")
    lines.append(f"repo root     {status.repo_root or '(none found)'}")
    lines.append("candidates (search order):")
    for cand in status.candidates or []:
        lines.append(f"  {cand}")
    if not status.candidates:
        lines.append("  (none searched)")
    if status.library:
        lib = status.library
        lines.append(f"chosen        {lib.path}")
        lines.append(f"format        {lib.format}   size {lib.size}")
        lines.append(f"sha256        {lib.sha256}")
    if status.abi:
        lines.append(f"ABI           {status.abi.name}: {status.abi.detail}")
        for schema in status.abi.schemas:
            lines.append(f"  {schema}")
    conf = status.conformance
    if conf:
        cached = " (cached)" if conf.cached else ""
        lines.append(f"conformance   on {conf.device}{cached}, {conf.cases} cases vs SDPA float32")
        lines.append(f"  forward     {'ok' if conf.forward_ok else 'FAILED'}  max error {conf.forward_max_error}"
                     f"{'  ' + conf.forward_error if conf.forward_error else ''}")
        bwd = ("ok" if conf.backward_ok else "FAILED") if conf.backward_tested else "not available"
        lines.append(f"  backward    {bwd}  max error {conf.backward_max_error}"
                     f"{'  ' + conf.backward_error if conf.backward_error else ''}")
    lines.append(f"attention     training: {status.attn_implementation(True)}   "
                 f"inference: {status.attn_implementation(False)}")
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from orchard_bridge.bridge import OrchardError, enable

    try:
        status = enable(args.device, repo_root=args.repo, library=args.library, mode=args.mode)
    except OrchardError as exc:
        print(f"orchard-bridge: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, default=str))
    else:
        print(_report_text(status))
    return 0


def _build(args: argparse.Namespace) -> int:
    from device_backend.paths import RepoRootError, find_repo_root

    from orchard_bridge.build import BuildError, build

    try:
        target = build(find_repo_root(args.repo))
    except (BuildError, RepoRootError) as exc:
        print(f"orchard-bridge build: cannot build: {exc}", file=sys.stderr)
        return 1
    print(f"orchard-bridge build: built {target}; check it with `orchard-bridge`")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orchard-bridge",
        description="Find, check, load and prove the Apple-Metal-Orchard attention kernel; report what is used and why.",
    )
    parser.add_argument("--repo", help="repository root (default: $REPO_ROOT, else discovered from the current folder)")
    sub = parser.add_subparsers(dest="command")
    report = sub.add_parser("report", help="(default) search, check and prove the kernel; print the report")
    build = sub.add_parser("build", help="build the library from the metal-backend/ sources with CMake (macOS arm64)")
    build.add_argument("--repo", default=argparse.SUPPRESS, help="repository root")
    for p in (parser, report):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON")
        p.add_argument("--device", default=argparse.SUPPRESS, help="device to prove the kernel on (default: device_backend's choice)")
        p.add_argument("--library", default=argparse.SUPPRESS, help="library file to try first (as config orchard.library)")
        p.add_argument("--mode", choices=("auto", "off", "require"), default=argparse.SUPPRESS,
                       help="auto (default), off, or require: exit 1 unless the kernel is proven for training")
    report.add_argument("--repo", default=argparse.SUPPRESS, help="repository root")
    args = parser.parse_args(argv)
    for name, default in (("json", False), ("device", None), ("library", None), ("mode", "auto")):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command == "build":
        return _build(args)
    return _report(args)


if __name__ == "__main__":
    sys.exit(main())
