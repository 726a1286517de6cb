"""Command line entry point (orchard-bridge)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchard-bridge", description="not built yet")
    parser.parse_args(argv)
    print("orchard-bridge: not built yet (see the package README); nothing was done", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
