"""Shared fixtures: one local Ray cluster for the whole session, and the real data under ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED_DATA} not present")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded 2-CPU Ray cluster shared by every test that needs Ray (start-up costs seconds here)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for attempt in range(3):
        if ray.is_initialized():
            break
        try:
            ray.init(  # "local": a cluster of our own, even if another one runs on this machine
                address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
        except Exception:
            # Ray gives its raylet a fixed 30 s to register; on a busy 2-core machine that can run out
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()
