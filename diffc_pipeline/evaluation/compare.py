"""Two ``diffc eval`` runs side by side: the BD-rate of each curve of one run against the same curve of the other.

Rates and qualities of a run are deterministic (every stream's seed comes from the run seed and the image id),
so two runs on the same images compare as if they were one: e.g. a new model release against the shipped one
(``--codec-model``), or one decode option against another, without re-running the anchors. Times are not
compared: they are not deterministic, and a comparison of times belongs in one run.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .bdrate import bd_rate, no_bd_rate_reason, rate_at_quality
from .report import QUALITY_METRICS


@dataclass(frozen=True)
class CurveComparison:
    curve: str  # the test run's curve
    against: str  # the anchor run's curve it is compared with (the same name unless ``against`` was given)
    metric: str
    bd_rate_percent: float | None  # of the ``test`` run's curve against the ``anchor`` run's; None: see ``note``
    overlap: tuple[float, float] | None
    points: tuple[int, int]  # (anchor, test) points on the curve
    note: str = ""  # why there is no BD-rate (too few points, no overlap)


def load_run(path: Path) -> dict:
    """``results.json`` of an eval run (``path`` is the run's directory or the file itself)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{file}: not a readable diffc eval results.json ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("curves"), dict) or "records" not in doc:
        raise InvalidInputError(f"{file}: not a diffc eval results.json (no curves and records)")
    return doc


def _images(doc: dict, curve: str) -> set[str]:
    """The images ``curve`` was averaged over: its records' images, within the DiffC subset when the run had
    one (``--diffc-limit``: every curve of ``curves`` is built on that subset, though the other codecs'
    records cover all images)."""
    images = {r["image"] for r in doc["records"] if r.get("variant") == curve}
    subset = doc.get("curve_images") or (doc.get("diffc") or {}).get("images")  # runs before curve_images
    return images & set(subset) if isinstance(subset, list) else images


@dataclass(frozen=True)
class PointComparison:
    curve: str  # the test run's curve the point lies on
    against: str  # the anchor run's curve it is measured against
    metric: str
    setting: object  # the point's setting (a prefix length, a quality, a grid point)
    bpp: float
    quality: float
    anchor_bpp: float | None  # the rate the anchor curve needs for the same quality; None: outside its range
    excess_percent: float | None  # bpp / anchor_bpp - 1: positive, the point costs more bits than the curve


def _select(anchor: dict, test: dict, curves: list[str] | None, against: str | None) -> list[tuple[str, str]]:
    """(test curve, anchor curve) pairs: every curve both runs hold, or those matching ``curves`` (names or
    shell-style patterns, e.g. ``cdc-mean@*`` for every prefix curve), each against the same-named anchor curve
    or against the one curve ``against``. Refuses pairs measured on different images: their difference would be
    the images'."""
    if against is not None and against not in anchor["curves"]:
        raise InvalidInputError(
            f"curve {against!r} is not in the anchor run; it has: {', '.join(sorted(anchor['curves']))}"
        )
    # the test curves that can be compared: all of the test run's against one anchor curve, else those in both
    available = sorted(test["curves"]) if against is not None else sorted(set(anchor["curves"]) & set(test["curves"]))
    where = "the test run; it has" if against is not None else "both runs; curves in both"
    missing = [c for c in curves or () if not fnmatch.filter(available, c)]
    if missing:
        raise InvalidInputError(f"curve {', '.join(missing)} is not in {where}: {', '.join(available) or 'none'}")
    chosen = [c for c in available if any(fnmatch.fnmatchcase(c, p) for p in curves)] if curves else available
    if not chosen:
        raise InvalidInputError(
            f"the runs have no curve in common (anchor: {', '.join(sorted(anchor['curves']))}; "
            f"test: {', '.join(sorted(test['curves']))}); --against CURVE compares with one anchor curve"
        )
    prepared = {k: (anchor.get("source", {}).get(k), test.get("source", {}).get(k)) for k in ("downsample", "tile")}
    other = {k: v for k, v in prepared.items() if v[0] != v[1]}
    if other:  # the same ids, other pixels: a 64x64 image and its 32x32 downsample share an id
        raise InvalidInputError(
            "the runs were measured on other pixels ("
            + "; ".join(f"--{k}: anchor {a}, test {t}" for k, (a, t) in other.items())
            + "): images with the same ids are not the same images"
        )
    pairs = [(c, against or c) for c in chosen]
    for curve, base in pairs:
        a_images, t_images = _images(anchor, base), _images(test, curve)
        if a_images != t_images:
            only = sorted(a_images ^ t_images)
            raise InvalidInputError(
                f"curve {curve!r} was measured on other images than {base!r} of the anchor run ({len(t_images)} "
                f"vs {len(a_images)}; e.g. {', '.join(only[:3])} in one only): run both with the same images "
                "and --limit"
            )
    return pairs


def compare_runs(
    anchor: dict, test: dict, curves: list[str] | None = None, against: str | None = None
) -> list[CurveComparison]:
    """BD-rate (PSNR and MS-SSIM in dB) of every curve both runs hold (or only ``curves``), ``test`` against
    ``anchor``; with ``against``, each chosen curve of ``test`` against that one curve of ``anchor`` (e.g. a
    new codec run with ``--anchors none`` against the AVIF curve of an earlier run on the same images)."""
    out = []
    for curve, base in _select(anchor, test, curves, against):
        a, t = anchor["curves"][base], test["curves"][curve]
        for metric in QUALITY_METRICS:
            points = ([p["bpp"] for p in a], [p[metric] for p in a], [p["bpp"] for p in t], [p[metric] for p in t])
            res = bd_rate(*points)
            out.append(
                CurveComparison(
                    curve,
                    base,
                    metric,
                    None if res is None else res.percent,
                    None if res is None else (res.quality_lo, res.quality_hi),
                    (len(a), len(t)),
                    no_bd_rate_reason(*points) if res is None else "",
                )
            )
    return out


def compare_points(
    anchor: dict, test: dict, curves: list[str] | None = None, against: str | None = None
) -> list[PointComparison]:
    """Each point of the chosen test curves against the anchor curve, one by one: the rate the curve needs for
    the point's quality and the point's excess over it. What a BD-rate averages away: e.g. how far each prefix
    of a progressive stream lies from direct coding at that rate (``--curve 'cdc-mean@*' --against cdc-mean``,
    one run given twice)."""
    out = []
    for curve, base in _select(anchor, test, curves, against):
        a = anchor["curves"][base]
        for metric in QUALITY_METRICS:
            for p in test["curves"][curve]:
                need = rate_at_quality([q["bpp"] for q in a], [q[metric] for q in a], p[metric])
                excess = None if need is None else (p["bpp"] / need - 1.0) * 100.0
                out.append(PointComparison(curve, base, metric, p.get("setting"), p["bpp"], p[metric], need, excess))
    return out
