"""LPIPS and FID from user-provided torch.export networks: the Frechet distance, the eval wiring, bad files."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval import write_images
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.evaluation.perceptual import GaussianFit, PerceptualMetrics, PerceptualSpec, frechet_distance


def test_frechet_distance_matches_the_closed_form_for_gaussians() -> None:
    """N(0, I) against N(m, 4 I) in 3-D: |m|^2 + tr(I) + tr(4 I) - 2 tr(2 I) = |m|^2 + 3."""
    rng = np.random.default_rng(0)
    m = np.array([1.0, -2.0, 0.5])
    a = rng.standard_normal((200_000, 3))
    b = m + 2.0 * rng.standard_normal((200_000, 3))
    assert frechet_distance(a, b) == pytest.approx(m @ m + 3.0, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_with_fewer_samples_than_features_is_finite() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-4)  # traces ~64 each


def test_frechet_distance_is_symmetric_and_a_prepared_fit_gives_the_same_value() -> None:
    """The originals' fit is made once per image set and reused for every curve point: same numbers."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((40, 16)) * 1.5 + 0.3
    d = frechet_distance(a, b)
    assert frechet_distance(b, a) == pytest.approx(d, rel=1e-9)
    assert frechet_distance(a, GaussianFit.of(b)) == pytest.approx(d, rel=1e-12)
    with pytest.raises(ValueError, match="feature set"):
        GaussianFit.of(b[:1])


class _Features(torch.nn.Module):
    """A stand-in for Inception features: pooled conv responses, (batch, 16)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def networks(tmp_path_factory, stand_in_lpips) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("nets")
    lpips, features = folder / "lpips.pt2", folder / "features.pt2"
    b, h, w = torch.export.Dim("b"), torch.export.Dim("h", min=8, max=4096), torch.export.Dim("w", min=8, max=4096)
    image = torch.rand(2, 3, 32, 32)
    dims = {0: b, 2: h, 3: w}
    lp = torch.export.export(stand_in_lpips(), (image, image.clone()), dynamic_shapes={"x": dims, "y": dims})
    torch.export.save(lp, str(lpips))
    aliased = torch.export.export(stand_in_lpips(), (image, image), dynamic_shapes={"x": dims, "y": dims})
    torch.export.save(aliased, str(folder / "aliased.pt2"))  # traced as one input: compares y with y
    torch.export.save(torch.export.export(_Features(), (image,), dynamic_shapes={"x": dims}), str(features))
    return str(lpips), str(features)


def test_eval_reports_lpips_and_fid_per_setting(networks: tuple[str, str], tmp_path: Path) -> None:
    lpips, features = networks
    write_images(tmp_path / "imgs", 4)
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "imgs"), "--out", str(out), "--channels", "none", "--anchors", "jpeg"]
    result = CliRunner().invoke(app, [*args, "--lpips", lpips, "--fid-features", features])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert all(r["lpips"] >= 0 and "features" not in r for r in doc["records"])
    points = doc["curves"]["jpeg"]  # by rate: lowest quality first
    assert points[0]["lpips"] > points[-1]["lpips"] and points[0]["fid"] > points[-1]["fid"] >= 0
    assert doc["perceptual"]["lpips"]["sha256"] == hashlib.sha256(Path(lpips).read_bytes()).hexdigest()
    assert "LPIPS" in (out / "summary.md").read_text()
    assert (out / "rd_lpips.png").is_file() and (out / "rd_fid.png").is_file()


def test_read_only_images_are_measured_without_a_warning(networks: tuple[str, str]) -> None:
    """``np.asarray`` of a Pillow image (``--downsample``) is read-only: the metrics copy instead of wrapping."""
    a = np.asarray(Image.new("RGB", (16, 16), (10, 200, 30)))
    b = np.asarray(Image.new("RGB", (16, 16), (12, 190, 40)))
    assert not a.flags.writeable
    metrics = PerceptualMetrics(PerceptualSpec(*networks))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fields = metrics.record_fields(a, b)
    assert fields["lpips"] > 0 and fields["features"].shape == (16,)


def test_eval_on_ray_workers_gives_the_in_process_records(
    networks: tuple[str, str], ray_cluster, tmp_path: Path
) -> None:
    """The actors build DiffC from the registry spec (--codec-opt included) and load the LPIPS network."""
    write_images(tmp_path / "imgs", 2, size=16)
    args = ["eval", str(tmp_path / "imgs"), "--model", "gaussian", "--anchors", "none", "--channels", "rcc"]
    args += ["--methods", "denoise,ancestral", "--steps", "1,3", "--batch-size", "1", "--lpips", networks[0]]
    args += ["--codec-opt", "ancestral_steps=3", "--codec-opt", "num_steps=3"]
    here = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "here")])
    on_ray = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ray"), "--workers", "2", "--threads", "1"])
    assert here.exit_code == 0 and on_ray.exit_code == 0, here.output + on_ray.output

    def records(name: str) -> list[dict]:
        doc = json.loads((tmp_path / name / "results.json").read_text())
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in doc["records"]]

    assert records("ray") == records("here") and len(records("here")) == 2 * 2 * 2  # images x prefixes x methods
    assert all(r["lpips"] >= 0 for r in records("ray"))
    doc = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert doc["diffc"]["codec"]["options"]["ancestral_steps"] == 3
    assert "diffc-rcc-denoise" in (tmp_path / "ray" / "index.html").read_text()


def test_bad_metric_files_are_refused_before_any_work(networks: tuple[str, str], tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 1)
    args = ["eval", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--channels", "none"]
    missing = CliRunner().invoke(app, [*args, "--lpips", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    pickled = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(3)}, pickled)  # a plain (pickled) checkpoint
    refused = CliRunner().invoke(app, [*args, "--fid-features", str(pickled)])
    assert refused.exit_code == 2 and "not a torch.export archive" in " ".join(refused.output.split())
    swapped = CliRunner().invoke(app, [*args, "--lpips", networks[1]])  # the feature network given as LPIPS
    assert swapped.exit_code == 2 and "does not take two" in " ".join(swapped.output.split())
    assert not (tmp_path / "out" / "results.json").exists()
    as_features = CliRunner().invoke(app, [*args, "--fid-features", networks[0]])  # LPIPS given as features
    assert as_features.exit_code == 2 and "does not take a (1, 3, H, W) image" in " ".join(as_features.output.split())
    aliased = CliRunner().invoke(app, [*args, "--lpips", str(Path(networks[0]).with_name("aliased.pt2"))])
    assert aliased.exit_code == 2 and "Export with two distinct tensors" in " ".join(aliased.output.split())
