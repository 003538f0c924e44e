"""Model registry: versioned weights with checksums, promoted atomically.

Weights are stored as safetensors bytes (never pickle), so what a device downloads
is exactly what is counted and checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    checksum: str
    nbytes: int


def download(served: np.ndarray, version: ModelVersion | None) -> int:
    """Devices move to ``version``: the bytes they download (each device whose
    ``served`` version is older fetches the whole model); ``served`` is updated."""
    current = version.version if version else 0
    stale = int((served < current).sum())
    served[:] = current
    return stale * (version.nbytes if version else 0)


class ChecksumMismatchError(RuntimeError):
    """Stored weights do not match the checksum their version was promoted with."""


class ModelRegistry:
    """In-memory registry; the latest version of a model is promoted only after its
    bytes are stored and checksummed, so readers see either the old or the new one."""

    def __init__(self) -> None:
        self._blobs: dict[tuple[str, int], bytes] = {}
        self._versions: dict[tuple[str, int], ModelVersion] = {}
        self._latest: dict[str, ModelVersion] = {}

    def publish(self, model: str, tensors: dict[str, torch.Tensor]) -> ModelVersion:
        blob = save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        previous = self._latest.get(model)
        version = ModelVersion(model, (previous.version if previous else 0) + 1,
                               hashlib.sha256(blob).hexdigest(), len(blob))
        self._blobs[(model, version.version)] = blob
        self._versions[(model, version.version)] = version
        self._latest[model] = version  # promotion: one assignment
        return version

    def latest(self, model: str) -> ModelVersion | None:
        return self._latest.get(model)

    def version(self, model: str, number: int) -> ModelVersion | None:
        """Version ``number`` of ``model``, if it was published."""
        return self._versions.get((model, number))

    def models(self) -> list[str]:
        """Names of the models with a promoted version."""
        return sorted(self._latest)

    def load(self, version: ModelVersion) -> dict[str, torch.Tensor]:
        blob = self._blobs[(version.model, version.version)]
        if hashlib.sha256(blob).hexdigest() != version.checksum:
            raise ChecksumMismatchError(f"{version.model} v{version.version}")
        return load_safetensors(blob)
