"""How much ``import device_backend`` adds to a fresh interpreter's start-up (target: under 50 ms).

Runs ``python -c pass`` (baseline) and ``python -c "import device_backend"`` (ours) alternately in
fresh subprocesses, N times each, and compares the medians. Also checks that torch was not imported.

    python packages/device-backend/benchmarks/bench_import.py --out runs/bench [--runs 30]

Writes ``<out>/import.json``; a relative ``--out`` is taken from the repository root
(``--repo``, ``$REPO_ROOT``, or discovery), falling back to the current folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
TARGET_MS = 50.0
CHECK = "import sys, device_backend; sys.exit(3 if 'torch' in sys.modules else 0)"


def run_once(code: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_import: {code!r} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed * 1000.0


def out_folder(value: str, repo: str | None) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    sys.path.insert(0, str(SRC))
    try:
        from device_backend.paths import RepoRootError, find_repo_root

        try:
            return find_repo_root(repo) / path
        except RepoRootError:
            return Path.cwd() / path
    finally:
        sys.path.remove(str(SRC))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench", help="folder for import.json (default runs/bench)")
    parser.add_argument("--repo", default=None, help="repository root (default: $REPO_ROOT or discovery)")
    parser.add_argument("--runs", type=int, default=30, help="fresh interpreters per variant (default 30)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    run_once(CHECK, env)  # fails loudly if the import breaks or pulls in torch
    for _ in range(3):  # warm the file-system cache
        run_once("pass", env)
        run_once("import device_backend", env)
    baseline, ours = [], []
    for _ in range(args.runs):
        baseline.append(run_once("pass", env))
        ours.append(run_once("import device_backend", env))
    base_ms, ours_ms = statistics.median(baseline), statistics.median(ours)
    added_ms = ours_ms - base_ms
    result = {
        "name": "import",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "runs": args.runs,
        "baseline": {"what": "python -c pass", "median_ms": round(base_ms, 2), "min_ms": round(min(baseline), 2)},
        "ours": {"what": "python -c 'import device_backend'", "median_ms": round(ours_ms, 2), "min_ms": round(min(ours), 2)},
        "added_ms": round(added_ms, 2),
        "ratio": round(ours_ms / base_ms, 3),
        "imports_torch": False,
        "target": f"added import time < {TARGET_MS:.0f} ms",
        "pass": added_ms < TARGET_MS,
    }
    folder = out_folder(args.out, args.repo)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "import.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"import device_backend: {ours_ms:.1f} ms vs python -c pass {base_ms:.1f} ms (median of {args.runs}); "
        f"added {added_ms:.1f} ms, target < {TARGET_MS:.0f} ms: {'PASS' if result['pass'] else 'FAIL'}; "
        f"torch not imported; wrote {folder / 'import.json'}"
    )
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
