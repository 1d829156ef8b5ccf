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
def ray_cluster():
    """One embedded 2-CPU Ray cluster shared by every test that needs Ray (start-up costs seconds here)."""
    import ray

    from diffc_pipeline.pipeline.runtime import start_local_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    start_local_ray(2, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine extra threads spin-wait (10x slower).
    Modules of small-model tests use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def stand_in_lpips():
    """A stand-in for LPIPS with its contract (distance of conv features, one value per image; the real
    network's weights cannot be downloaded here), as a class: the eval's and the CDC trainer's tests export it.
    """
    import torch

    class StandInLpips(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ((self.conv(x) - self.conv(y)) ** 2).mean(dim=(1, 2, 3))

    return StandInLpips


@pytest.fixture(scope="session")
def gaussian_model():
    """The closed-form Gaussian stand-in for the diffusion network (``models/gaussian.py``): exact, fast, and
    the same prior on both sides, for tests of the channel and the stream rather than of a trained model."""
    from diffc_pipeline.models.gaussian import GaussianModel

    return GaussianModel.default()
