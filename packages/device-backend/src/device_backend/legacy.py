"""The API the user's old code and tests call, kept working on top of :func:`device_backend.setup`.

Differences from the old module: detection runs in :meth:`DeviceBackend.setup` (or on first use of a
property), never at import; it never silently falls back to the CPU when a device is forced; and
it never sets ``PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0``. Vocabulary is the old one: ``device_type``
is ``"metal"`` for MPS, ``attention_backend`` is ``"metal"`` (Orchard first, decided by
orchard_bridge), ``"sdpa"`` on CUDA and ``"native"`` on the CPU. New code should use
:func:`device_backend.setup` and the :class:`~device_backend.Choice` it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from device_backend.decision import Choice
from device_backend.runtime import configure_environment, setup

log = logging.getLogger("device_backend")


@dataclass
class BackendConfig:
    """The old configuration record (``DeviceBackend.config``)."""

    device: str  # "cuda", "mps", "cpu"
    device_type: str  # "cuda", "metal", "cpu"
    is_metal: bool
    is_cuda: bool
    attention_backend: str  # "metal", "sdpa", "native"
    supports_bf16: bool
    max_vram_gb: float
    platform_name: str


class DeviceBackend:
    """Old entry point: ``DeviceBackend(force_device=None, verbose=False)``, then ``.setup()``."""

    def __init__(self, force_device: str | None = None, verbose: bool = False, **setup_options: Any):
        self.force_device = force_device
        self.verbose = verbose
        self._setup_options = setup_options
        self._choice: Choice | None = None

    def setup(self) -> Choice:
        """Detect (with retries), set the environment variables that are still in time, and return the choice."""
        for note in configure_environment():
            log.debug("%s", note)
        self._choice = setup(self.force_device or "auto", **self._setup_options)
        if self.verbose:
            self.log_summary()
        return self._choice

    @property
    def choice(self) -> Choice:
        """The :class:`~device_backend.Choice` (runs :meth:`setup` on first use)."""
        if self._choice is None:
            self.setup()
        assert self._choice is not None
        return self._choice

    @property
    def config(self) -> BackendConfig:
        import platform

        return BackendConfig(
            device=self.choice.device_type,
            device_type=self.device_type,
            is_metal=self.is_metal,
            is_cuda=self.is_cuda,
            attention_backend=self.attention_backend,
            supports_bf16=self.supports_bf16,
            max_vram_gb=self.max_vram_gb,
            platform_name=self.choice.facts.os or platform.system(),
        )

    @property
    def device(self):
        """A ``torch.device`` (the plain string when torch is not installed)."""
        if not self.choice.facts.torch_installed:
            return self.choice.device
        return self.choice.torch_device

    @property
    def device_type(self) -> str:
        return {"mps": "metal"}.get(self.choice.device_type, self.choice.device_type)

    @property
    def attention_backend(self) -> str:
        return {"mps": "metal", "cuda": "sdpa"}.get(self.choice.device_type, "native")

    @property
    def supports_bf16(self) -> bool:
        return self.choice.dtype == "bfloat16"

    @property
    def max_vram_gb(self) -> float:
        """Accelerator memory budget in GB (1e9 bytes); 0.0 on the CPU, as before."""
        if self.choice.device_type == "cpu" or not self.choice.memory_budget_bytes:
            return 0.0
        return self.choice.memory_budget_bytes / 1e9

    @property
    def is_metal(self) -> bool:
        return self.choice.device_type == "mps"

    @property
    def is_cuda(self) -> bool:
        return self.choice.device_type == "cuda"

    def get_model_config_overrides(self) -> dict[str, Any]:
        """Model settings that follow from the device: ``torch_dtype`` (never float16 on Metal)."""
        return {"torch_dtype": self.choice.dtype}

    def log_summary(self) -> None:
        from device_backend.report import format_report

        for line in format_report(self.choice).splitlines():
            log.info("%s", line)


def get_device_backend(force_device: str | None = None, verbose: bool = False, **setup_options: Any) -> DeviceBackend:
    """A :class:`DeviceBackend` with :meth:`~DeviceBackend.setup` already run."""
    backend = DeviceBackend(force_device=force_device, verbose=verbose, **setup_options)
    backend.setup()
    return backend
