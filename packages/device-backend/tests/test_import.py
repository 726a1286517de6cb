"""import device_backend stays light: no torch, and the pure half works without it."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import device_backend
assert "torch" not in sys.modules, "import device_backend imported torch"
from device_backend import choose, Choice, Facts, DeviceBackend, configure_environment, setup, find_repo_root
from device_backend.profiles import apple_m2_macos14
from device_backend.report import format_report
choice = choose(apple_m2_macos14())
format_report(choice)
DeviceBackend(probe_fn=apple_m2_macos14, subprocess_probe=False, apply=False).is_metal
assert "torch" not in sys.modules, "the pure half imported torch"
print("ok")
"""


def test_import_does_not_import_torch():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_public_names_resolve():
    import device_backend

    for name in device_backend.__all__:
        assert getattr(device_backend, name) is not None, name
    assert callable(device_backend.choose) and callable(device_backend.probe) and callable(device_backend.setup)
    assert set(dir(device_backend)) >= set(device_backend.__all__)
