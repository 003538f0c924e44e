"""Which code made a result: a digest of dcrec's own source.

Kept runs (``dcrec eval``, ``curve``, ``scale``, ``tune``) are re-used when their
settings match, but settings do not say which code made them: a change that moves a
method's bits leaves the old runs looking current. Every kept run and every replay
report records :func:`source_digest`; a kept run re-used under other code says so.

>>> digest = source_digest()
>>> len(digest), digest == source_digest()
(12, True)
"""

from __future__ import annotations

import hashlib
import importlib
from collections import Counter
from functools import cache
from pathlib import Path

PACKAGES = ("dcrec", "dcrec.streams", "dcrec.models", "dcrec.state", "dcrec.replay")


@cache
def source_digest() -> str:
    """SHA-256 (first 12 hex digits) of every ``.py`` file of dcrec's packages, by
    package and name: equal digests, equal code."""
    sha = hashlib.sha256()
    for package in PACKAGES:
        folder = Path(importlib.import_module(package).__path__[0])
        for path in sorted(folder.glob("*.py")):
            sha.update(f"{package}/{path.name}\0".encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()[:12]


def made_by(codes: list[str | None]) -> str:
    """One line on which code made these results, for the Markdown beside them."""
    if not codes:
        return ""
    counts = Counter(code or "unrecorded" for code in codes)
    here = source_digest()
    if set(counts) == {here}:
        return f"All {len(codes)} runs made by this code (source digest {here})."
    others = ", ".join(f"{code} ({n})" for code, n in counts.items() if code != here)
    return (f"{counts[here]} of {len(codes)} runs made by this code (source digest "
            f"{here}), the others by other code: {others}. `--fresh` re-runs them.")
