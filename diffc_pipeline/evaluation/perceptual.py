"""Perceptual and realism metrics from networks the user provides: LPIPS distances and FID features.

Both need pretrained weights (LPIPS: AlexNet or VGG plus its linear heads; FID: Inception-v3), which this
project cannot download and does not ship. The user brings them as **torch.export archives** (``.pt2``,
``torch.export.save``) made once on a machine that has the weights (docs/benchmarks.md, "Perceptual
metrics", shows the few lines for the `lpips` and `pytorch-fid` packages). One such file carries the network
as a graph of tensor operations (JSON) plus raw weights, and loads with torch alone - the packages that
define those networks need torchvision, which would pull another torch build here - and without running
any Python code from the file, unlike a pickled checkpoint or TorchScript (whose loader torch deprecates).
Export with a dynamic batch, height and width (``dynamic_shapes``) so that every image size runs.

Contracts of the two modules (float32 NCHW RGB, any image size; resizing, if any, is the module's business):

- LPIPS: ``forward(x, y)`` with ``x, y`` in ``[-1, 1]`` returns one distance per image (``B`` values in any
  shape); lower is more similar. Recorded per image and setting as ``lpips``.
- FID features: ``forward(x)`` with ``x`` in ``[0, 1]`` returns ``(B, F)`` features. FID is a property of a
  set, so each curve point (codec and setting) gets the Frechet distance between the Gaussian fits of its
  reconstructions' features and the originals' features of the same images. With a few hundred images and
  thousands of features FID is biased upwards and noisy: compare codecs only on the same images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffcError


def load_exported(path: str, what: str) -> torch.nn.Module:
    """Load a torch.export archive, with an error that names the file and what it was for."""
    if not Path(path).is_file():
        raise DiffcError(f"{what}: no such file {path!r}")
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # torch raises assorted errors for pickles, TorchScript zips and junk alike
        raise DiffcError(
            f"{what}: {path!r} is not a torch.export archive (torch.export.save, .pt2); pickled checkpoints "
            f"are refused ({type(exc).__name__})"
        ) from None


@dataclass(frozen=True)
class PerceptualSpec:
    """Paths of the user's metric networks; plain strings so that Ray workers can load them too."""

    lpips: str | None = None
    fid_features: str | None = None

    def __bool__(self) -> bool:
        return bool(self.lpips or self.fid_features)

    def describe(self) -> dict:
        """Path and SHA-256 of each network, for the results' metadata (which weights made the numbers)."""
        return {
            name: {"path": path, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}
            for name, path in (("lpips", self.lpips), ("fid_features", self.fid_features))
            if path
        }


class PerceptualMetrics:
    """The loaded networks of a :class:`PerceptualSpec`; computes the per-image fields of a record."""

    def __init__(self, spec: PerceptualSpec) -> None:
        self._lpips = load_exported(spec.lpips, "--lpips") if spec.lpips else None
        self._features = load_exported(spec.fid_features, "--fid-features") if spec.fid_features else None
        if self._lpips is not None:
            check_lpips(self._lpips)
        if self._features is not None:  # fail on a wrong contract now, not after the codecs have run
            self.features(np.zeros((32, 32, 3), dtype=np.uint8))

    def record_fields(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict:
        """``lpips`` (float) and ``features`` (array, taken out of the record before it is written)."""
        out: dict = {}
        with torch.no_grad():
            if self._lpips is not None:
                d = self._lpips(_signed(reference), _signed(reconstruction))
                out["lpips"] = _one_value(d, "--lpips")
            if self._features is not None:
                out["features"] = self.features(reconstruction)
        return out

    def features(self, pixels: np.ndarray) -> np.ndarray:
        try:
            with torch.no_grad():
                f = self._features(_batch_of_one(pixels) / 255.0)
        except Exception as exc:  # wrong arity or input contract: say which option's file it is
            raise DiffcError(f"--fid-features: the module does not take a (1, 3, H, W) image: {exc}") from None
        if f.ndim != 2 or f.shape[0] != 1:
            raise DiffcError(f"--fid-features: the module must return (batch, features), got {tuple(f.shape)}")
        return f[0].double().numpy()


def check_lpips(module: torch.nn.Module) -> None:
    """Refuse an LPIPS module that cannot tell two different images apart: torch.export, given the same
    tensor for both example inputs, traces ``x`` and ``y`` as one input and the module then compares ``y``
    with itself (distance 0 for every image, silently)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    try:
        with torch.no_grad():
            same, different = module(a, a), module(a, b)
    except Exception as exc:  # wrong arity or input contract: say which option's file it is
        raise DiffcError(f"--lpips: the module does not take two (1, 3, H, W) images: {exc}") from None
    same, different = _one_value(same, "--lpips"), _one_value(different, "--lpips")
    if not different > same:
        raise DiffcError(
            f"--lpips: the module gives two random images distance {different:g} (the same image: {same:g}); "
            "was it exported with one tensor for both example inputs? Export with two distinct tensors."
        )


def _batch_of_one(pixels: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float ``(1, 3, H, W)`` in [0, 255]; a copy, so read-only arrays (decoded files)
    raise no "non-writable NumPy array" warning."""
    return torch.tensor(pixels).permute(2, 0, 1)[None].float()


def _signed(pixels: np.ndarray) -> torch.Tensor:
    return _batch_of_one(pixels) / 127.5 - 1.0


def _one_value(t: torch.Tensor, what: str) -> float:
    if t.numel() != 1:
        raise DiffcError(f"{what}: the module must return one value per image, got shape {tuple(t.shape)}")
    return float(t.reshape(()))


@dataclass(frozen=True)
class GaussianFit:
    """Mean, covariance and covariance square root of one feature set ``(n, F)``. The originals' fit is the
    same for every curve point over the same images, so it is made once and its square root (the costly
    eigendecomposition with 2048-d features) reused."""

    mean: np.ndarray
    cov: np.ndarray
    root: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianFit:
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need an (n >= 2, F) feature set, got {features.shape}")
        cov = np.cov(features, rowvar=False, ddof=1)
        w, v = np.linalg.eigh(cov)
        return cls(features.mean(0), cov, (v * np.sqrt(np.clip(w, 0, None))) @ v.T)


def frechet_distance(a: np.ndarray, b: np.ndarray | GaussianFit) -> float:
    """Frechet distance between Gaussian fits of two feature sets ``(n, F)`` (``b`` may be a prepared
    :class:`GaussianFit`): FID when the features are Inception's. ``tr sqrt(Ca Cb)`` is taken as
    ``tr sqrt(Cb^1/2 Ca Cb^1/2)``, a symmetric PSD matrix, via eigendecompositions: stable for the singular
    covariances of fewer images than features (scipy's sqrtm returns complex noise there)."""
    fb = b if isinstance(b, GaussianFit) else GaussianFit.of(b)
    if a.ndim != 2 or a.shape[1] != fb.mean.shape[0] or len(a) < 2:
        raise ValueError(f"need two (n >= 2, F) feature sets, got {a.shape} and {fb.mean.shape[0]} features")
    mu = a.mean(0) - fb.mean
    ca = np.cov(a, rowvar=False, ddof=1)
    cross = np.linalg.eigvalsh(fb.root @ ca @ fb.root)
    d = mu @ mu + np.trace(ca) + np.trace(fb.cov) - 2.0 * np.sqrt(np.clip(cross, 0, None)).sum()
    return max(0.0, float(d))  # equal sets come out at -1e-6-ish from rounding
