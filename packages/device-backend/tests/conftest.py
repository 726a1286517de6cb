"""Fixtures for the device-backend tests (fact profiles live in device_backend.profiles)."""

from __future__ import annotations

import pytest
from device_backend.profiles import PROFILES


@pytest.fixture
def profile():
    """profile("cuda_t4") -> fresh Facts for that machine."""
    return lambda name: PROFILES[name]()


@pytest.fixture(autouse=True)
def _restore_environ():
    """setup()/DeviceBackend.setup() may set torch's variables; keep other tests' environment unchanged."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
