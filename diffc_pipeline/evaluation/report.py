"""Turn records into what a user reads: curve summaries, BD-rates, results.json, RD plots, HTML, a table.

Curves are per-setting means over images (mean bpp, mean PSNR, mean MS-SSIM, mean LPIPS), the usual
convention for RD curves of an image set; per-image records stay in the JSON for anyone who wants another
aggregation. FID is a set statistic: one value per curve point (see :mod:`.perceptual`).

Each record names its ``family``: ``classical`` (an anchor; setting = quality), ``diffc`` (setting = prefix
steps), ``codec`` (a ``--codec`` grid's whole streams; setting = the grid point) or ``codec-prefix`` (the
prefixes of one grid point; setting = chunks). BD-rates are taken for DiffC and ``codec`` curves against the
anchors, DiffC's real channel against its ideal one, and ``codec`` curves against DiffC-F's real stream.
"""

from __future__ import annotations

import html
import json
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.table import Table

from .bdrate import bd_rate, no_bd_rate_reason
from .perceptual import GaussianFit, frechet_distance
from .runner import EvalOutput, Showcase

# BD-rate in MS-SSIM is taken on -10 log10(1 - MS-SSIM) (dB), which spreads out the values near 1 where
# codecs differ.
QUALITY_METRICS = ("psnr", "ms_ssim_db")
# Beyond PSNR / MS-SSIM: the detail ratio is always measured, LPIPS and FID when the user gave networks
PERCEPTUAL_METRICS = {
    "detail": "detail ratio (1: as sharp as the original, < 1: blurred)",
    "lpips": "LPIPS (lower: closer)",
    "fid": "FID (lower: more realistic)",
}
SHOWCASE_TARGET_BPP = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
SHOWCASE_MAX_RATIO = 1.5  # a reconstruction is shown for a target bpp only if its bpp is within this factor


def ms_ssim_db(value: float) -> float:
    return -10.0 * math.log10(max(1e-10, 1.0 - value))


SETTING_NAMES = {"classical": "quality", "diffc": "steps", "codec": "options", "codec-prefix": "chunks"}
COMPARED = ("diffc", "codec")  # the families whose curves get BD-rates and lowest-rate comparisons


def setting_of(record: dict) -> int | str:
    family = record["family"]
    return record["quality"] if family == "classical" else record["steps"] if family == "diffc" else record["setting"]


def curves(records: Sequence[dict], reference_features: dict[str, np.ndarray] | None = None) -> dict[str, list[dict]]:
    """Per variant, one point per setting (quality or prefix length) with the means over images, by rate;
    with ``reference_features`` (the originals' FID features) also the FID of each point's reconstructions."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["variant"], setting_of(r))].append(r)
    out: dict[str, list[dict]] = defaultdict(list)
    reference_fits: dict[tuple, GaussianFit] = {}
    for (variant, setting), rs in groups.items():
        family = rs[0]["family"]
        point = {
            "family": family,
            "setting": setting,
            "setting_name": SETTING_NAMES[family],
            "images": len(rs),
            **{k: float(np.mean([r[k] for r in rs])) for k in ("bpp", "psnr", "ms_ssim", "encode_s", "decode_s")},
        }
        point["ms_ssim_db"] = float(np.mean([ms_ssim_db(r["ms_ssim"]) for r in rs]))
        for metric in ("detail", "lpips"):  # per-image values (records from before the detail ratio lack it)
            if metric in rs[0]:
                point[metric] = float(np.mean([r[metric] for r in rs]))
        if reference_features is not None and "features" in rs[0] and len(rs) >= 2:
            images = tuple(sorted(r["image"] for r in rs))
            if images not in reference_fits:  # most points share one image set: one fit of the originals
                reference_fits[images] = GaussianFit.of(np.stack([reference_features[i] for i in images]))
            point["fid"] = frechet_distance(np.stack([r["features"] for r in rs]), reference_fits[images])
        if family == "diffc":
            point.update(_diffc_rate_parts(rs, point["bpp"]))
        elif family != "classical":
            point.update(_codec_rate_parts(rs, point["bpp"]))
        out[variant].append(point)
    return {v: sorted(ps, key=lambda p: p["bpp"]) for v, ps in sorted(out.items())}


def _mean_bpp(rs: Sequence[dict], key: str, scale: float = 1.0) -> float:
    return float(np.mean([scale * r[key] / (r["height"] * r["width"]) for r in rs]))


def _diffc_rate_parts(rs: Sequence[dict], bpp: float) -> dict:
    """The KL of each stream's own trajectory, and (real channel) the header and payload against it."""
    out = {"kl_bpp": _mean_bpp(rs, "kl_bits")}
    if rs[0].get("header_bytes") is not None:
        out["header_bytes"] = float(np.mean([r["header_bytes"] for r in rs]))
        out["header_bpp"] = _mean_bpp(rs, "header_bytes", 8)
        out["payload_over_kl"] = (bpp - out["header_bpp"]) / out["kl_bpp"]
        out["stream_header_bpp"] = _mean_bpp(rs, "stream_header_bytes", 8)
    return out


def _codec_rate_parts(rs: Sequence[dict], bpp: float) -> dict:
    """The charged header's and the whole header's share, and the real payload over the codec's own estimate
    where it gives one."""
    out = {"header_bpp": _mean_bpp(rs, "header_bytes", 8), "stream_header_bpp": _mean_bpp(rs, "stream_header_bytes", 8)}
    if all(r["estimated_bits"] is not None for r in rs):
        out["estimated_bpp"] = _mean_bpp(rs, "estimated_bits")
        if out["estimated_bpp"] > 0:
            out["payload_over_estimate"] = (bpp - out["header_bpp"]) / out["estimated_bpp"]
    return out


def _family(curve_map: dict[str, list[dict]], variant: str) -> str:
    return curve_map[variant][0]["family"]


# The real channel against the ideal one is also reported from here up: at 64x64 the lowest prefixes (10-16 dB)
# carry a few dozen bits, where any per-image field or per-step count is a large share, and no image there is
# usable; BD-rate averages over PSNR uniformly, so those points weigh as much as the ones people would use.
USABLE_PSNR_DB = 20.0


def bd_rates(curve_map: dict[str, list[dict]]) -> list[dict]:
    """BD-rate of every DiffC and ``--codec`` curve against every anchor; DiffC's real channel also against
    the ideal one, a ``--codec`` curve also against DiffC-F's real stream."""
    tests = [v for v in curve_map if _family(curve_map, v) in COMPARED]
    classical = [v for v in curve_map if _family(curve_map, v) == "classical"]
    out = []
    for test in tests:
        anchors = list(classical)
        if test.startswith("diffc-rcc-") and _family(curve_map, test) == "diffc":
            anchors.append(test.replace("diffc-rcc-", "diffc-ideal-"))
        elif _family(curve_map, test) == "codec":
            anchors.append("diffc-rcc-flow")
        for anchor in anchors:
            if anchor not in curve_map:
                continue
            for metric in QUALITY_METRICS:
                out.append(_bd_entry(curve_map, test, anchor, metric, None))
            if anchor.startswith("diffc-ideal-"):
                out.append(_bd_entry(curve_map, test, anchor, "psnr", USABLE_PSNR_DB))
    return out


def _bd_entry(curve_map: dict[str, list[dict]], test: str, anchor: str, metric: str, floor: float | None) -> dict:
    a, t = curve_map[anchor], curve_map[test]
    curves = ([p["bpp"] for p in a], [p[metric] for p in a], [p["bpp"] for p in t], [p[metric] for p in t])
    res = bd_rate(*curves, floor)
    return {
        "test": test,
        "anchor": anchor,
        "metric": metric,
        "from": floor,
        "bd_rate_percent": None if res is None else res.percent,
        "overlap": None if res is None else [res.quality_lo, res.quality_hi],
        "note": no_bd_rate_reason(*curves, floor) if res is None else "",
    }


def lowest_rate_summary(
    output: EvalOutput, curve_map: dict[str, list[dict]], images: set[str] | None = None
) -> dict[str, dict]:
    """Per anchor: the lowest bpp it reaches at all, and what DiffC and ``--codec`` deliver below that rate;
    over ``images`` only when given (the DiffC subset the curves were built on: a floor over other images
    would not be the floor of the curves beside it)."""
    by_codec: dict[str, list[float]] = defaultdict(list)
    for r in output.lowest_rates:
        if images is None or r["image"] in images:
            by_codec[r["variant"]].append(r["bpp"])
    summary = {}
    for name, bpps in sorted(by_codec.items()):
        floor = float(np.mean(bpps))
        below = {
            v: [{"bpp": p["bpp"], "psnr": p["psnr"], "ms_ssim": p["ms_ssim"]} for p in ps if p["bpp"] < floor]
            for v, ps in curve_map.items()
            if ps[0]["family"] in COMPARED
        }
        summary[name] = {
            "mean_lowest_bpp": floor,
            "min_lowest_bpp": float(np.min(bpps)),
            "max_lowest_bpp": float(np.max(bpps)),
            "images": len(bpps),
            "points_below": below,
        }
    return summary


def flow_vs_ancestral(curve_map: dict[str, list[dict]]) -> dict[str, float]:
    """PSNR of DiffC-F minus DiffC-A at the longest prefix, per channel (paper: ~3 dB at high rate)."""
    out = {}
    for channel in ("rcc", "ideal"):
        f, a = curve_map.get(f"diffc-{channel}-flow"), curve_map.get(f"diffc-{channel}-ancestral")
        if f and a:
            top_f = max(f, key=lambda p: p["setting"])
            top_a = max(a, key=lambda p: p["setting"])
            out[channel] = top_f["psnr"] - top_a["psnr"]
    return out


def write_json(
    path: Path, meta: dict, output: EvalOutput, curve_map: dict, bd: list[dict], lowest: dict, all_curves: dict
) -> None:
    doc = {
        **meta,
        "curves": curve_map,
        "curve_images": output.diffc_images,  # the images ``curves`` average over, when not every image
        "curves_all_images": all_curves,
        "bd_rates": bd,
        "lowest_rate": lowest,
        "flow_minus_ancestral_psnr_db_at_full_rate": flow_vs_ancestral(curve_map),
        "records": [{k: v for k, v in r.items() if k != "features"} for r in output.records],
        "lowest_rate_per_image": output.lowest_rates,
    }
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")


CODEC_COLORS = ("tab:cyan", "tab:olive", "tab:pink", "tab:gray", "black")


def _style(variant: str, family: str) -> dict:
    if family in ("codec", "codec-prefix"):  # a stable colour per codec name, whatever else is plotted
        color = CODEC_COLORS[zlib.crc32(variant.split("@")[0].encode()) % len(CODEC_COLORS)]
        if family == "codec":
            return {"color": color, "linestyle": "-", "marker": "^", "markersize": 4}
        return {"color": color, "linestyle": ":", "marker": ".", "markersize": 3, "linewidth": 0.8}
    colors = {
        "jpeg": "tab:red",
        "webp": "tab:orange",
        "avif": "tab:brown",
        "flow": "tab:blue",
        "ancestral": "tab:green",
        "denoise": "tab:purple",
    }
    if family == "diffc":
        _, channel, method = variant.split("-", 2)
        return {
            "color": colors.get(method, "black"),
            "linestyle": "-" if channel == "rcc" else "--",
            "marker": "o" if channel == "rcc" else None,
            "markersize": 3,
        }
    return {"color": colors.get(variant, "gray"), "linestyle": ":", "marker": "s", "markersize": 3}


def plot(path: Path, curve_map: dict[str, list[dict]], metric: str, ylabel: str, title: str) -> None:
    """bpp vs quality, one line per variant; log rate axis, as DiffC goes far below the classical floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for variant, points in curve_map.items():
        points = [p for p in points if metric in p]
        if not points:
            continue
        ax.plot(
            [p["bpp"] for p in points],
            [p[metric] for p in points],
            label=variant,
            **_style(variant, points[0]["family"]),
        )
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_html(directory: Path, showcase: Showcase, title: str) -> None:
    """One image at several bitrates per codec, side by side: the closest setting to each target bpp."""
    img_dir = directory / "showcase"
    img_dir.mkdir(exist_ok=True)
    Image.fromarray(showcase.image.pixels).save(img_dir / "original.png")
    h, w, _ = showcase.image.pixels.shape
    scale = max(1, 256 // max(h, w))  # small images are shown enlarged with visible pixels
    style = f"width:{w * scale}px;image-rendering:pixelated"
    head = "".join(f"<th>~{t:g} bpp</th>" for t in SHOWCASE_TARGET_BPP)
    rows = [
        f"<tr><th>original</th><td colspan={len(SHOWCASE_TARGET_BPP)}>"
        f"<img src='showcase/original.png' style='{style}'></td></tr>"
    ]
    for variant in sorted(showcase.recon):
        cells = []
        entries = showcase.recon[variant]
        for target in SHOWCASE_TARGET_BPP:
            rec, pixels = min(entries, key=lambda e: abs(math.log(max(e[0]["bpp"], 1e-9) / target)))
            ratio = max(rec["bpp"], 1e-9) / target
            if not 1 / SHOWCASE_MAX_RATIO <= ratio <= SHOWCASE_MAX_RATIO:
                lowest = min(e[0]["bpp"] for e in entries)
                highest = max(e[0]["bpp"] for e in entries)
                what = "below its lowest rate" if target < lowest else "no setting near this rate"
                cells.append(f"<td class=na>{what}<br>(range {lowest:.2f}-{highest:.2f} bpp)</td>")
                continue
            name = re.sub(r"[^A-Za-z0-9._=@-]", "_", f"{variant}_{setting_of(rec)}.png")
            Image.fromarray(pixels).save(img_dir / name)
            cells.append(
                f"<td><img src='showcase/{html.escape(name)}' style='{style}'><br>"
                f"{rec['bpp']:.3f} bpp, {rec['psnr']:.2f} dB, MS-SSIM {rec['ms_ssim']:.3f}</td>"
            )
        rows.append(f"<tr><th>{html.escape(variant)}</th>{''.join(cells)}</tr>")
    page = (
        "<!doctype html><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px;text-align:center;font-size:12px}"
        ".na{color:#999}</style>"
        f"<h1>{html.escape(title)}</h1><p>Image <code>{html.escape(showcase.image.id)}</code> ({w}x{h}); "
        "each cell is the setting whose rate is closest to the column's target (within a factor "
        f"{SHOWCASE_MAX_RATIO:g}).</p><table><tr><th></th>{head}</tr>{''.join(rows)}</table>\n"
    )
    (directory / "index.html").write_text(page)


def summary_tables(curve_map: dict[str, list[dict]], bd: list[dict], lowest: dict) -> list[Table]:
    """A curve table (one row per variant) and a BD-rate table (one row per pair), narrow enough for a terminal.

    Cells fold within their column: a long name (``cdc-diffusion@temperature=0.8``) would otherwise end in an
    ellipsis in an 80-column terminal."""
    curves_table = Table(title="Rate-distortion curves (means over images)")
    for col in ("variant", "points", "bpp range", "PSNR (dB)", "MS-SSIM"):
        curves_table.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
    for variant, points in curve_map.items():
        floor = f" (floor {lowest[variant]['mean_lowest_bpp']:.2f})" if variant in lowest else ""
        curves_table.add_row(
            variant,
            str(len(points)),
            f"{points[0]['bpp']:.3f}-{points[-1]['bpp']:.3f}{floor}",
            f"{min(p['psnr'] for p in points):.2f}-{max(p['psnr'] for p in points):.2f}",
            f"{min(p['ms_ssim'] for p in points):.3f}-{max(p['ms_ssim'] for p in points):.3f}",
        )
    bd_table = Table(title="BD-rate (negative = fewer bits than the anchor at equal quality)")
    for col in ("test", "anchor", "PSNR", "PSNR overlap", "MS-SSIM"):
        bd_table.add_column(col, justify="left" if col in ("test", "anchor") else "right", overflow="fold")
    for test, anchor, p, m in _full_range_pairs(bd):
        bd_table.add_row(
            test,
            anchor,
            _percent(p),
            "" if p["overlap"] is None else f"{p['overlap'][0]:.1f}-{p['overlap'][1]:.1f}",
            _percent(m),
        )
    return [curves_table, bd_table] if bd else [curves_table]


def _full_range_pairs(bd: list[dict]) -> list[tuple[str, str, dict, dict]]:
    """``(test, anchor, PSNR entry, MS-SSIM entry)`` per pair, over the whole overlap, in report order."""
    full = {(b["test"], b["anchor"], b["metric"]): b for b in bd if b["from"] is None}
    pairs = dict.fromkeys((b["test"], b["anchor"]) for b in bd)
    return [(t, a, full[(t, a, "psnr")], full[(t, a, "ms_ssim_db")]) for t, a in pairs]


def _measured(curve_map: dict[str, list[dict]], metric: str) -> bool:
    """Whether any curve point carries ``metric``: LPIPS and FID exist only when the user gave networks, the
    detail ratio only in records made since it was added."""
    return any(metric in p for points in curve_map.values() for p in points)


def _diffc_curves(curve_map: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {v: points for v, points in curve_map.items() if points[0]["family"] == "diffc"}


def _percent(b: dict) -> str:
    return b["note"] or "-" if b["bd_rate_percent"] is None else f"{b['bd_rate_percent']:+.1f}%"


def markdown_summary(curve_map: dict[str, list[dict]], bd: list[dict], lowest: dict, title: str) -> str:
    """The same numbers as Markdown, ready to paste into a benchmark page."""
    lines = [
        f"### {title}",
        "",
        "Curves (mean over images; setting = anchor quality, DiffC prefix steps, a --codec grid point or its "
        "prefix chunks; est. bpp = the codec's own rate estimate, DiffC's KL):",
        "",
    ]
    extra = [m for m in PERCEPTUAL_METRICS if _measured(curve_map, m)]
    lines += [
        "| variant | setting | bpp | est. bpp | PSNR (dB) | MS-SSIM | "
        + "".join(f"{PERCEPTUAL_METRICS[m]} | " for m in extra)
        + "enc s/img | dec s/img |",
        "|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|",
    ]
    for variant, points in curve_map.items():
        for p in points:
            estimate = p.get("kl_bpp", p.get("estimated_bpp"))
            kl = "" if estimate is None else f"{estimate:.3f}"
            perceptual = "".join(f"{p[m]:.4f} | " if m in p else " | " for m in extra)
            lines.append(
                f"| {variant} | {p['setting_name']} {p['setting']} | {p['bpp']:.3f} | {kl} | {p['psnr']:.2f} | "
                f"{p['ms_ssim']:.4f} | {perceptual}{p['encode_s']:.4f} | {p['decode_s']:.4f} |"
            )
    if lowest:
        lines += ["", "Lowest rate each anchor reaches at all (smallest file over every quality):", ""]
        lines += ["| codec | mean bpp | min bpp | max bpp |", "|---|---|---|---|"]
        for name, s in lowest.items():
            lines.append(
                f"| {name} | {s['mean_lowest_bpp']:.3f} | {s['min_lowest_bpp']:.3f} | {s['max_lowest_bpp']:.3f} |"
            )
    if bd:
        lines += ["", "BD-rate (negative: the test needs fewer bits than the anchor at equal quality):", ""]
        lines += ["| test | anchor | BD-rate PSNR | PSNR overlap (dB) | BD-rate MS-SSIM |", "|---|---|---|---|---|"]
        for test, anchor, p, m in _full_range_pairs(bd):
            over = "" if p["overlap"] is None else f"{p['overlap'][0]:.1f}-{p['overlap'][1]:.1f}"
            lines.append(f"| {test} | {anchor} | {_percent(p)} | {over} | {_percent(m)} |")
        usable = [b for b in bd if b["from"] is not None]
        if usable:
            lines += ["", f"Real channel against ideal from {USABLE_PSNR_DB:.0f} dB up (PSNR):", ""]
            lines += [f"- {b['test']} vs {b['anchor']}: {_percent(b)}" for b in usable]
    gaps = flow_vs_ancestral(curve_map)
    if gaps:
        lines += [
            "",
            "DiffC-F minus DiffC-A in PSNR at the longest prefix: "
            + ", ".join(f"{ch} {g:+.2f} dB" for ch, g in gaps.items()),
        ]
    return "\n".join(lines) + "\n"


def write_outputs(directory: Path, meta: dict, output: EvalOutput, title: str) -> list[Table]:
    """results.json, summary.md, rd_psnr.png, rd_msssim.png, index.html (+ showcase/*.png) in ``directory``;
    rd_lpips.png and rd_fid.png when those metrics were measured.

    When DiffC ran on a subset of the images (``--diffc-limit``), curves, BD-rates and plots compare every
    codec on that subset only - BD-rates between different image sets would measure the images, not the
    codecs - and the other codecs' curves over all images are kept apart in ``curves_all_images``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if output.diffc_images is not None:
        subset = set(output.diffc_images)
        curve_map = curves([r for r in output.records if r["image"] in subset], output.reference_features)
        # DiffC records exist on the subset only, so their curves over all images are the ones just made:
        # only the other ones are recomputed (FID per point is the costly part)
        others = [r for r in output.records if r["family"] != "diffc"]
        all_curves = {**curves(others, output.reference_features), **_diffc_curves(curve_map)}
        all_curves = dict(sorted(all_curves.items()))
        title = f"{title}, all codecs on the {len(subset)} DiffC images"
    else:
        curve_map = all_curves = curves(output.records, output.reference_features)
    bd = bd_rates(curve_map)
    lowest = lowest_rate_summary(output, curve_map, None if output.diffc_images is None else set(output.diffc_images))
    write_json(directory / "results.json", meta, output, curve_map, bd, lowest, all_curves)
    (directory / "summary.md").write_text(markdown_summary(curve_map, bd, lowest, title))
    plot(directory / "rd_psnr.png", curve_map, "psnr", "PSNR (dB, mean over images)", title)
    plot(directory / "rd_msssim.png", curve_map, "ms_ssim", "MS-SSIM (mean over images)", title)
    for metric, label in PERCEPTUAL_METRICS.items():
        if _measured(curve_map, metric):
            plot(directory / f"rd_{metric}.png", curve_map, metric, label, title)
    if output.showcase is not None:
        write_html(directory, output.showcase, title)
    return summary_tables(curve_map, bd, lowest)
