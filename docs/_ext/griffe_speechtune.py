"""Griffe extension for the API reference (static analysis only; nothing is imported).

1. Lazy exports. Several speechtune packages export their public names lazily (PEP 562):
   ``_LAZY = {"Name": "._module", ...}`` plus ``__getattr__`` (see ``speechtune/_lazy.py``), so
   that ``import speechtune.metrics`` does not import torch. Static analysis cannot follow
   ``__getattr__``; this extension reads the ``_LAZY`` literal from the package's source and adds
   each name as an alias of ``<package>.<module>.<name>``, and sets ``__all__`` to those names
   where the source computes it (``__all__ = sorted(_LAZY)``).
2. reStructuredText roles. Docstrings use Sphinx roles (``:class:`~speechtune.x.Y```,
   ``:func:``, ``:mod:``, ``:data:``, ``:meth:``, ``:attr:``, ``:exc:``); Markdown has no such
   thing, so each role becomes a code span (``Y``), and a paragraph ending in ``::`` ends in ``:``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")


def _lazy_names(module: griffe.Module) -> dict[str, str] | None:
    path = module.filepath
    if not isinstance(path, Path):  # a namespace package has a list of paths
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).split("`", 1)[1].startswith("~") else target
    return f"`{shown}`"


class SpeechtuneDocs(griffe.Extension):
    """Lazy exports as aliases; Sphinx roles as code spans."""

    def on_package(self, *, pkg: griffe.Module, loader: Any, **kwargs: Any) -> None:
        self._walk(pkg)

    def _walk(self, module: griffe.Module) -> None:
        names = _lazy_names(module) if module.is_init_module else None
        if names:
            for name, target in names.items():
                if name in module.members:
                    continue
                # "._wer" is relative to this package; "speechtune.x" would be absolute
                source = f"{module.path}.{target.lstrip('.')}" if target.startswith(".") else target
                alias = griffe.Alias(name, f"{source}.{name}", parent=module)
                module.set_member(name, alias)
            if not module.exports:
                module.exports = sorted(names)
        for member in list(module.members.values()):
            if not member.is_alias and member.is_module:
                self._walk(member)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None:
            return
        text = _ROLE.sub(_role_to_code, doc.value)
        text = re.sub(r"(\S)::\n", r"\1:\n", text)
        text = re.sub(r"\s::\n", "\n", text)
        doc.value = text
