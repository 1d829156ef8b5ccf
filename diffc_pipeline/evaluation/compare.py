"""Two ``diffc eval`` runs side by side: the BD-rate of each curve of one run against the same curve of the other.

Rates and qualities of a run are deterministic (every stream's seed comes from the run seed and the image id),
so two runs on the same images compare as if they were one: e.g. a new model release against the shipped one
(``--codec-model``), or one decode option against another, without re-running the anchors. Times are not
compared: they are not deterministic, and a comparison of times belongs in one run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .bdrate import bd_rate
from .report import QUALITY_METRICS


@dataclass(frozen=True)
class CurveComparison:
    curve: str  # the test run's curve
    against: str  # the anchor run's curve it is compared with (the same name unless ``against`` was given)
    metric: str
    bd_rate_percent: float | None  # of the ``test`` run's curve against the ``anchor`` run's; None: no overlap
    overlap: tuple[float, float] | None
    points: tuple[int, int]  # (anchor, test) points on the curve


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
    return {r["image"] for r in doc["records"] if r.get("variant") == curve}


def compare_runs(
    anchor: dict, test: dict, curves: list[str] | None = None, against: str | None = None
) -> list[CurveComparison]:
    """BD-rate (PSNR and MS-SSIM in dB) of every curve both runs hold (or only ``curves``), ``test`` against
    ``anchor``; with ``against``, each chosen curve of ``test`` against that one curve of ``anchor`` (e.g. a
    new codec run with ``--anchors none`` against the AVIF curve of an earlier run on the same images).
    Refuses curves measured on different images: their difference would be the images'."""
    if against is not None and against not in anchor["curves"]:
        raise InvalidInputError(
            f"curve {against!r} is not in the anchor run; it has: {', '.join(sorted(anchor['curves']))}"
        )
    # the test curves that can be compared: all of the test run's against one anchor curve, else those in both
    available = sorted(test["curves"]) if against is not None else sorted(set(anchor["curves"]) & set(test["curves"]))
    where = "the test run; it has" if against is not None else "both runs; curves in both"
    missing = sorted(set(curves or ()) - set(available))
    if missing:
        raise InvalidInputError(f"curve {', '.join(missing)} is not in {where}: {', '.join(available) or 'none'}")
    chosen = [c for c in available if c in curves] if curves else available
    if not chosen:
        raise InvalidInputError(
            f"the runs have no curve in common (anchor: {', '.join(sorted(anchor['curves']))}; "
            f"test: {', '.join(sorted(test['curves']))}); --against CURVE compares with one anchor curve"
        )
    pairs = [(c, against or c) for c in chosen]
    out = []
    for curve, base in pairs:
        a_images, t_images = _images(anchor, base), _images(test, curve)
        if a_images != t_images:
            only = sorted(a_images ^ t_images)
            raise InvalidInputError(
                f"curve {curve!r} was measured on other images than {base!r} of the anchor run ({len(t_images)} "
                f"vs {len(a_images)}; e.g. {', '.join(only[:3])} in one only): run both with the same images "
                "and --limit"
            )
        a, t = anchor["curves"][base], test["curves"][curve]
        for metric in QUALITY_METRICS:
            res = bd_rate([p["bpp"] for p in a], [p[metric] for p in a], [p["bpp"] for p in t], [p[metric] for p in t])
            out.append(
                CurveComparison(
                    curve,
                    base,
                    metric,
                    None if res is None else res.percent,
                    None if res is None else (res.quality_lo, res.quality_hi),
                    (len(a), len(t)),
                )
            )
    return out
