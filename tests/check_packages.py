"""Package-install checks used by noxfile.py.

--editable-only NAME...: the named packages in this interpreter are editable installs of this
    checkout (so a test never runs against a sibling that came from an index).
--dist DIR: each wheel in DIR installed alone into a fresh venv (siblings from DIR, third-party
    dependencies from the index), imported, its entry point run with --help; siblings proven local.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import venv
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> (distribution, console script, siblings it depends on, needs torch)
PACKAGES = {
    "device_backend": ("starcoder-device-backend", "device-backend", (), False),
    "orchard_bridge": ("starcoder-orchard-bridge", "orchard-bridge", ("device_backend",), True),
    "starcoder_trainer": ("starcoder-trainer", "starcoder-train", ("device_backend", "orchard_bridge"), True),
}


def direct_url(dist: metadata.Distribution) -> dict:
    text = dist.read_text("direct_url.json")
    return json.loads(text) if text else {}


def check_editable(names: list[str]) -> None:
    for name in names:
        dist_name = PACKAGES[name][0]
        info = direct_url(metadata.distribution(dist_name))
        url = info.get("url", "")
        if not info.get("dir_info", {}).get("editable") or not url.startswith("file://"):
            sys.exit(f"{dist_name} is not an editable install of this checkout (direct_url: {info or 'none'})")
        if Path(url.removeprefix("file://")).resolve() != (ROOT / _folder(name)).resolve():
            sys.exit(f"{dist_name} is installed from {url}, not from {ROOT / _folder(name)}")
    print("editable installs from this checkout:", ", ".join(names))


def _folder(name: str) -> str:
    return {"device_backend": "packages/device-backend", "orchard_bridge": "packages/orchard-bridge",
            "starcoder_trainer": "packages/trainer"}[name]


PROBE = """
import importlib, importlib.util, json, sys
from importlib import metadata
name, dists, needs_torch = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
mod = importlib.import_module(name)
out = {"version": mod.__version__, "torch": importlib.util.find_spec("torch") is not None, "urls": {}}
for d in dists:
    text = metadata.distribution(d).read_text("direct_url.json") or "{}"
    out["urls"][d] = json.loads(text).get("url", "index")
print(json.dumps(out))
"""


def check_wheels(dist_dir: Path, constraints: Path) -> None:
    wheels = {w.name.split("-")[0]: w for w in dist_dir.glob("*.whl")}
    for name, (dist_name, script, siblings, needs_torch) in PACKAGES.items():
        wheel = wheels.get(dist_name.replace("-", "_"))
        if wheel is None:
            sys.exit(f"no wheel for {dist_name} in {dist_dir}")
        with tempfile.TemporaryDirectory(prefix=f"pkgcheck-{name}-") as tmp:
            env_dir = Path(tmp) / "venv"
            venv.create(env_dir, with_pip=True)
            py = env_dir / "bin" / "python"
            pip = [str(py), "-m", "pip", "install", "-q", "-c", str(constraints)]
            sibling_wheels = [str(wheels[PACKAGES[s][0].replace("-", "_")]) for s in siblings]
            if sibling_wheels:  # siblings from the local wheels, so the index cannot supply them
                _run([*pip, "--no-deps", *sibling_wheels])
            _run([*pip, str(wheel)])
            dists = [dist_name, *(PACKAGES[s][0] for s in siblings)]
            result = json.loads(_run([str(py), "-c", PROBE, name, json.dumps(dists), "1" if needs_torch else "0"]))
            for d, url in result["urls"].items():
                if not url.startswith("file://") or not url.endswith(".whl") or str(dist_dir) not in url:
                    sys.exit(f"{name}: {d} did not come from the local wheels in {dist_dir} (got {url})")
            if not needs_torch and result["torch"]:
                sys.exit(f"{name}: installing it alone pulled torch in; it must stay torch-free")
            _run([str(env_dir / "bin" / script), "--help"])
            print(f"ok {dist_name} {result['version']} alone in a fresh venv; torch={result['torch']}; "
                  f"siblings local: {', '.join(dists[1:]) or 'none'}")


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editable-only", nargs="+", choices=sorted(PACKAGES))
    parser.add_argument("--dist", type=Path)
    parser.add_argument("--constraints", type=Path, default=ROOT / "packages" / "constraints.txt")
    args = parser.parse_args()
    if args.editable_only:
        check_editable(args.editable_only)
    if args.dist:
        check_wheels(args.dist.resolve(), args.constraints.resolve())


if __name__ == "__main__":
    main()
