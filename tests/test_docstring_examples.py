"""The runnable examples in the docstrings (models document their equation with one)
run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("dcrec", "dcrec.models", "dcrec.streams", "dcrec.state", "dcrec.replay",
            "dcrec.infra")
MODULES = sorted(f"{package}.{m.name}" for package in PACKAGES
                 for m in pkgutil.iter_modules(importlib.import_module(package).__path__)
                 if not m.ispkg)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
