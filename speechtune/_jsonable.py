"""Values that JSON (and Optuna's user attributes) can hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _jsonable(value: Any) -> Any:
    """Values Optuna can store as JSON (non-finite floats become None, tuples lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)
