"""Model size: trainable parameters and bytes on disk."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["parameter_count", "size_on_disk"]


def parameter_count(model: torch.nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once).

    Args:
        model: The model.

    Returns:
        Total elements of parameters with ``requires_grad``.
    """
    # Module.parameters() already de-duplicates tied weights.
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def size_on_disk(path: str | os.PathLike[str]) -> int:
    """Bytes a file, or all files under a directory, take.

    Symbolic links are not followed, so a link to a large file costs only the link.

    Args:
        path: A file or a directory.

    Returns:
        The total size in bytes.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise FileNotFoundError(f"size_on_disk: no such file or directory: {root}")
    if not root.is_dir() or root.is_symlink():
        return root.lstat().st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            total += (Path(dirpath) / name).lstat().st_size
    return total
