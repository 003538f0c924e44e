"""The model registry in Redis: versions with checksums, atomic promotion, weights as
safetensors bytes.

A version's bytes are stored first; promotion then sets the model's latest version and
appends it to the history in one MULTI/EXEC, so a reader sees either the old or the
new version, never a version without its bytes. Loading verifies the sha256.
"""

from __future__ import annotations

import hashlib

import msgspec
import redis
import torch
from dcrec.state.registry import ChecksumMismatchError, ModelVersion
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def _encode(version: ModelVersion) -> bytes:
    return msgspec.msgpack.encode([version.model, version.version, version.checksum,
                                   version.nbytes])


def _decode(raw: bytes) -> ModelVersion:
    model, number, checksum, nbytes = msgspec.msgpack.decode(raw)
    return ModelVersion(model, number, checksum, nbytes)


class RedisModelRegistry:
    """The :class:`~dcrec.state.registry.ModelRegistry` interface on Redis, shared by
    the cloud process (which publishes) and the workers (which load)."""

    def __init__(self, client: redis.Redis, run: str) -> None:
        self.client = client
        self.prefix = f"dcrec:{run}:registry:"

    def publish(self, model: str, tensors: dict[str, torch.Tensor],
                version: int | None = None) -> ModelVersion:
        """Store and promote the next version of ``model`` (or version ``version``)."""
        blob = save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        if version is None:
            previous = self.latest(model)
            version = (previous.version if previous else 0) + 1
        entry = ModelVersion(model, version, hashlib.sha256(blob).hexdigest(), len(blob))
        self.client.set(f"{self.prefix}{model}:{version}", blob)
        with self.client.pipeline(transaction=True) as pipe:  # promotion: MULTI/EXEC
            pipe.set(f"{self.prefix}{model}:latest", _encode(entry))
            pipe.rpush(f"{self.prefix}{model}:history", _encode(entry))
            pipe.execute()
        return entry

    def latest(self, model: str) -> ModelVersion | None:
        raw = self.client.get(f"{self.prefix}{model}:latest")
        return _decode(raw) if raw is not None else None

    def version(self, model: str, number: int) -> ModelVersion | None:
        """A promoted version of ``model`` by number."""
        for raw in self.client.lrange(f"{self.prefix}{model}:history", 0, -1):
            entry = _decode(raw)
            if entry.version == number:
                return entry
        return None

    def load(self, version: ModelVersion) -> dict[str, torch.Tensor]:
        blob = self.client.get(f"{self.prefix}{version.model}:{version.version}")
        if blob is None or hashlib.sha256(blob).hexdigest() != version.checksum:
            raise ChecksumMismatchError(f"{version.model} v{version.version}")
        return load_safetensors(blob)
