"""Services some tests need (PostgreSQL, Ray): skip without them here, fail without them in CI.

CI (``.ci/run``) installs the services and sets ``SPEECHTUNE_REQUIRE_SERVICES=1``: there, a test
that cannot use one must fail rather than skip, or a broken set-up would pass unnoticed.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Set by CI: a missing service fails the test instead of skipping it.
REQUIRE_ENV = "SPEECHTUNE_REQUIRE_SERVICES"


def unavailable(what: str, why: object, *, module_level: bool = False) -> NoReturn:
    """Skip (or, under :data:`REQUIRE_ENV`, fail) because ``what`` cannot be used."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {what} is unavailable: {why}")
    pytest.skip(f"{what} is unavailable: {why}", allow_module_level=module_level)
    raise AssertionError("unreachable")  # pytest.skip raises


def require_ray_tune() -> None:
    """At the top of a test module that needs Ray Tune."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        unavailable("Ray Tune (pip install 'ray[tune]')", exc, module_level=True)
