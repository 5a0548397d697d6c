"""Lazy package exports (PEP 562), so `import speechtune.<part>` stays light: a training script
that only needs the reporter does not import torch, and parts can be used on their own."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for a package that exports ``names`` (name -> submodule)."""
    cache: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if name in names:
            if name not in cache:
                cache[name] = getattr(import_module(names[name], package), name)
            return cache[name]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        # The module's own (eager) names too: a package may export some of each.
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
