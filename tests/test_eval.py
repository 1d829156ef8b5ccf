"""``diffc eval``: BD-rate, metrics, classical codecs, image selection and the written report."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter
from rich.console import Console
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.codecs import resolve
from diffc_pipeline.errors import DiffcError, InvalidInputError
from diffc_pipeline.evaluation.bdrate import bd_rate, pareto_front, rate_at_quality
from diffc_pipeline.evaluation.classical import GRIDS, Anchor
from diffc_pipeline.evaluation.data import ImageSource, choose_subset, load_eval_images
from diffc_pipeline.evaluation.metrics import (
    DETAIL_RATIO_MAX,
    PSNR_LOSSLESS_DB,
    detail_ratio,
    ms_ssim,
    ms_ssim_scales,
    psnr,
)
from diffc_pipeline.evaluation.report import summary_tables


def natural_image(seed: int, size: int = 32) -> np.ndarray:
    """Smooth gradients plus texture: compresses like a photo, unlike white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(3 * xx + seed), np.cos(2 * yy - seed), xx * yy], axis=-1) * 80 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


# --- BD-rate ---


@pytest.mark.parametrize("ratio", [0.8, 1.25, 0.5])
def test_bd_rate_of_a_constant_rate_ratio_is_that_ratio(ratio):
    rates = [0.3, 0.7, 1.5, 3.0, 6.0]
    quality = [22.0, 25.5, 29.0, 33.0, 38.0]
    res = bd_rate(rates, quality, [r * ratio for r in rates], quality)
    assert res is not None
    assert res.percent == pytest.approx((ratio - 1) * 100, abs=1e-9)
    assert (res.quality_lo, res.quality_hi) == (22.0, 38.0)


def test_bd_rate_integrates_over_the_overlap_only():
    # test curve: same rates, 2 dB better; over the overlap [24, 30] the anchor's log-rate is linear in dB
    # (log r = (q - 20) / 4), so the test needs exp(-2/4) of the anchor's rate there: -39.35 %.
    q = np.array([20.0, 24.0, 28.0, 32.0])
    r = np.exp((q - 20) / 4)
    res = bd_rate(r, q, r[:3], q[:3] + 2)
    assert res is not None
    assert (res.quality_lo, res.quality_hi) == (22.0, 30.0)
    assert res.percent == pytest.approx((math.exp(-0.5) - 1) * 100, abs=1e-9)


def test_bd_rate_from_a_quality_floor_averages_above_it_only():
    # the test costs 4x the anchor below 20 dB and the same from there; PCHIP's slope at a node depends on the
    # intervals either side, so from 25 dB up the two interpolants are identical: BD-rate 0
    q = np.array([10.0, 15.0, 20.0, 25.0, 30.0, 35.0])
    r = np.exp(q / 5)
    test = np.where(q < 20, 4 * r, r)
    res = bd_rate(r, q, test, q, min_quality=25.0)
    assert res is not None and (res.quality_lo, res.quality_hi) == (25.0, 35.0)
    assert res.percent == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(r, q, test, q).percent > 20  # the whole range sees the low end
    assert bd_rate(r, q, test, q, min_quality=36.0) is None


def test_bd_rate_says_none_without_overlap():
    assert bd_rate([1, 2, 4], [20, 25, 30], [0.1, 0.2], [10, 15]) is None
    assert bd_rate([1], [20], [1, 2], [20, 25]) is None  # one point is no curve


def test_rate_at_quality_reads_the_log_rate_curve_inside_its_range_only():
    """Log-rate linear in quality: PCHIP reproduces the line, so the interpolated rate is exact; a dominated
    point is no part of the curve; outside the quality range there is no answer (no extrapolation)."""
    rates, qualities = [1.0, math.e, math.e**2, 5.0], [20.0, 30.0, 40.0, 25.0]  # (5.0, 25) is dominated
    assert rate_at_quality(rates, qualities, 35.0) == pytest.approx(math.e**1.5, rel=1e-12)
    assert rate_at_quality(rates, qualities, 20.0) == pytest.approx(1.0, rel=1e-12)
    assert rate_at_quality(rates, qualities, 19.9) is None and rate_at_quality(rates, qualities, 40.1) is None
    assert rate_at_quality([1.0], [20.0], 20.0) is None


def test_pareto_front_drops_dominated_points():
    r, q = pareto_front([1, 2, 2, 3, 4], [10, 12, 13, 11, 14])
    assert r.tolist() == [1, 2, 4] and q.tolist() == [10, 13, 14]


# --- metrics ---


def test_psnr_known_value():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = np.full((8, 8, 3), 110, np.uint8)  # MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))  # 28.1308 dB
    assert psnr(a, a) == PSNR_LOSSLESS_DB


def test_detail_ratio_is_one_for_the_original_below_one_blurred_above_one_noisy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert detail_ratio(image, image) == 1.0
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
    assert detail_ratio(image, blurred) < 0.5
    smooth = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3))).copy()
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    assert detail_ratio(smooth, noisy) > 2
    # scaled detail: 2x the high frequencies around a flat mid-grey is a ratio of 2
    grey = 128 + (rng.integers(0, 2, (16, 16, 1)) * 20 - 10).repeat(3, axis=2)
    doubled = 128 + (grey.astype(int) - 128) * 2
    assert detail_ratio(grey.astype(np.uint8), doubled.astype(np.uint8)) == pytest.approx(2.0)
    flat = np.full((8, 8, 3), 50, np.uint8)
    assert detail_ratio(flat, flat) == 1.0 and detail_ratio(flat, image[:8, :8]) == DETAIL_RATIO_MAX


def test_ms_ssim_matches_pytorch_msssim_where_it_applies():
    from pytorch_msssim import ms_ssim as reference_ms_ssim
    from pytorch_msssim import ssim as reference_ssim

    rng = np.random.default_rng(1)
    a = natural_image(3, 192)
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)

    def t(x):
        return torch.from_numpy(x).permute(2, 0, 1)[None].double()

    assert ms_ssim_scales(192, 192) == 5
    assert ms_ssim(a, b) == pytest.approx(float(reference_ms_ssim(t(a), t(b), data_range=255)), abs=1e-5)
    # one scale is plain SSIM (pytorch-msssim builds its window in float32: agreement to ~1e-6)
    assert ms_ssim_scales(15, 15) == 1
    assert ms_ssim(a[:15, :15], b[:15, :15]) == pytest.approx(
        float(reference_ssim(t(a[:15, :15]), t(b[:15, :15]), data_range=255)), abs=1e-5
    )
    assert ms_ssim_scales(64, 64) == 3 and ms_ssim_scales(321, 481) == 5
    assert ms_ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ms_ssim_scales(10, 40)


def test_metrics_take_read_only_images_without_a_warning():
    """Decoded files are often read-only buffers: the metrics copy them instead of wrapping them in torch."""
    a, b = natural_image(0), natural_image(1)
    a.setflags(write=False)
    b.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0 < ms_ssim(a, b) < 1 and psnr(a, b) < PSNR_LOSSLESS_DB


# --- classical anchors ---

ANCHORS = ("jpeg", "webp", "avif")


@pytest.mark.parametrize("name", ["webp", "avif"])
def test_lowest_rate_is_the_smallest_file_at_any_quality(name):
    img = natural_image(1)
    sizes = {}
    for q in range(0, 101):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, name.upper(), quality=q, **({"method": 6} if name == "webp" else {}))
        sizes[q] = buf.tell()
    size, quality = Anchor.build(name).lowest_rate(img)
    assert size == min(sizes.values())
    assert sizes[quality] == size


def test_anchors_use_the_registry_scale_and_refuse_unknown_names():
    jpeg = Anchor.build("jpeg")
    assert jpeg.qualities == GRIDS["jpeg"] and 0 not in jpeg.codecs  # JPEG's scale starts at 1
    assert jpeg.describe()["codec"]["name"] == "jpeg"
    with pytest.raises(DiffcError, match="unknown anchor 'png'"):
        Anchor.build("png")


# --- image selection ---


def test_subset_is_fixed_and_independent_of_order():
    ids = [f"img_{i:04d}" for i in range(1000)]
    a = choose_subset(ids, 50)
    assert a == choose_subset(list(reversed(ids)), 50) == sorted(a) and len(set(a)) == 50
    assert a != ids[:50]  # a spread-out choice, not the first files
    assert choose_subset(ids, None) == ids


def test_parquet_subset_downsample_and_tiles(tmp_path):
    ids = [f"p{i}" for i in range(6)]
    pngs = []
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(natural_image(i, 64)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    pq.write_table(pa.table({"id": ids, "image": pngs}), tmp_path / "part-0.parquet")
    images = load_eval_images(ImageSource(str(tmp_path), limit=4))
    assert [im.id for im in images] == choose_subset(ids, 4)
    assert np.array_equal(images[0].pixels, natural_image(int(images[0].id[1:]), 64))
    tiled = load_eval_images(ImageSource(str(tmp_path), limit=2, downsample=2, tile=16))
    assert len(tiled) == 2 * 4 and tiled[0].pixels.shape == (16, 16, 3)
    first = natural_image(int(tiled[0].id.split("_")[0][1:]), 64).astype(float)
    block_mean = first[:2, :2].mean(axis=(0, 1))
    assert np.all(np.abs(tiled[0].pixels[0, 0] - block_mean) <= 1)


def test_eval_lists_and_names_images_as_compress_does(tmp_path):
    """One listing for both: eval once had its own (no globs, dot-files read, an id column required)."""
    from diffc_pipeline.pipeline.sources import list_source

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(natural_image(i, 16)).save(folder / f"im{i}.png")
    (folder / ".hidden.png").write_bytes(b"not even an image")  # skipped, as compress skips it
    whole = [im.id for im in load_eval_images(ImageSource(str(folder)))]
    assert whole == [im.id for im in load_eval_images(ImageSource(str(folder / "*.png")))]
    assert whole == list_source(str(folder), {}).items.column("id").to_pylist() == ["im0.png", "im1.png", "im2.png"]
    buf = io.BytesIO()
    Image.fromarray(natural_image(9, 16)).save(buf, "PNG")
    pq.write_table(pa.table({"image": [buf.getvalue()] * 2}), tmp_path / "noid.parquet")  # no id column
    assert [im.id for im in load_eval_images(ImageSource(str(tmp_path / "noid.parquet")))] == ["noid:0", "noid:1"]


# --- the command ---


def write_images(folder: Path, count: int, size: int = 32) -> None:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(natural_image(i, size)).save(folder / f"im{i}.png")


def file_bytes(name: str, quality: int, pixels: np.ndarray) -> int:
    """Size of the file the registry codec writes: what an anchor's rate must be."""
    return len(resolve(name, {"quality": quality}).build().compress(pixels[None], [0])[0].chunks[0])


def test_eval_classical_only_writes_all_outputs(tmp_path):
    write_images(tmp_path / "imgs", 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "imgs"), "--out", str(out), "--channels", "none"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    expected = 3 * sum(len(GRIDS[n]) for n in ANCHORS)
    assert len(doc["records"]) == expected
    assert {r["image"] for r in doc["records"]} == {"im0.png", "im1.png", "im2.png"}  # ids keep the suffix
    for r in doc["records"]:
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / (32 * 32))
        assert 0 < r["ms_ssim"] <= 1 and r["psnr"] > 10 and r["ms_ssim_scales"] == 2 and 0 < r["detail"] < 5
    for r in doc["records"][:: len(doc["records"]) // 5]:  # the rate is the registry codec's whole file
        assert r["bytes"] == file_bytes(r["variant"], r["quality"], natural_image(int(r["image"][2]), 32))
    assert len(doc["lowest_rate_per_image"]) == 9
    for name, summary in doc["lowest_rate"].items():
        per_image = [r["bpp"] for r in doc["lowest_rate_per_image"] if r["variant"] == name]
        swept = [r["bpp"] for r in doc["records"] if r["variant"] == name]
        assert summary["mean_lowest_bpp"] == pytest.approx(np.mean(per_image))
        assert min(per_image) <= min(swept)
    assert set(doc["curves"]) == set(ANCHORS) == set(doc["anchors"])
    assert len(doc["curves"]["jpeg"]) == len(GRIDS["jpeg"]) and doc["anchors"]["jpeg"]["qualities"] == [*GRIDS["jpeg"]]
    assert doc["params"]["channels"] == [] and doc["params"]["out"] == str(out) and doc["command"]
    assert doc["date"] and doc["machine"]["cpus"] >= 1
    assert "| jpeg | quality 1 |" in (out / "summary.md").read_text()
    detail = [p["detail"] for p in doc["curves"]["jpeg"]]  # low qualities blur
    assert detail[0] < detail[-1] and detail[-1] == pytest.approx(1.0, abs=0.15)
    for png in ("rd_psnr.png", "rd_msssim.png", "rd_detail.png"):
        assert Image.open(out / png).size[0] > 100
    page = (out / "index.html").read_text()
    shown = [s.split("'")[0] for s in page.split("src='")[1:]]
    assert "showcase/original.png" in shown and len(shown) > 3
    for src in shown:
        assert (out / src).is_file()
    assert "Rate-distortion curves" in result.output and "webp" in result.output
    # not a terminal: a plain progress line when each part starts and ends (and every 30 s between)
    assert "anchors: 0/9 (image x anchor), 0 s started" in result.output
    assert "anchors: 9/9 (image x anchor)" in result.output


def test_eval_a_registry_codec_at_a_grid_of_options(tmp_path):
    """The generic path, with WebP standing in for a learned codec: one curve point per grid value, the rate
    from the real stream, BD-rates against the anchors, a row on the side-by-side page."""
    write_images(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "imgs"), "--out", str(out), "--channels", "none", "--anchors", "jpeg"]
    result = CliRunner().invoke(app, [*args, "--codec", "webp", "--codec-grid", "quality=20,60"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    grid = [r for r in doc["records"] if r["family"] == "codec"]
    assert len(grid) == 2 * 2 and {r["variant"] for r in grid} == {"webp"}
    for r in grid:
        q = r["options"]["quality"]
        assert r["setting"] == f"quality={q}" and r["chunks"] == r["num_chunks"] == 1
        assert (
            r["bytes"] == file_bytes("webp", q, natural_image(int(r["image"][2]), 32)) and r["bits"] == 8 * r["bytes"]
        )
        assert r["bpp"] == pytest.approx(r["bits"] / (32 * 32)) and r["estimated_bits"] is None
    assert [p["setting"] for p in doc["curves"]["webp"]] == ["quality=20", "quality=60"]
    assert [p["images"] for p in doc["curves"]["webp"]] == [2, 2]
    assert [pt["label"] for pt in doc["codec"]["points"]] == ["quality=20", "quality=60"]
    pairs = {(b["test"], b["anchor"], b["metric"]) for b in doc["bd_rates"]}
    assert ("webp", "jpeg", "psnr") in pairs and ("jpeg", "webp", "psnr") not in pairs
    assert "| webp | options quality=20 |" in (out / "summary.md").read_text()
    assert "<th>webp</th>" in (out / "index.html").read_text()

    def refused(*extra: str) -> str:
        r = CliRunner().invoke(app, [*args, *extra])
        assert r.exit_code == 2, r.output
        return " ".join(r.output.split())

    assert "valid options: quality" in refused("--codec", "webp", "--codec-grid", "rate=1,2")
    assert "valid decode options: none" in refused("--codec", "webp", "--decode-opt", "method=mean")
    assert "also an anchor" in refused("--codec", "jpeg")
    assert "need --codec" in refused("--codec-grid", "quality=5")


def test_eval_a_progressive_codec_decodes_every_prefix_and_reports_its_estimate(tmp_path):
    """DiffC (gaussian model) through the generic path: a progressive codec with its own rate estimate. Its
    whole streams are the ones eval's DiffC sweep writes for the same images and seed."""
    write_images(tmp_path / "imgs", 2, size=16)
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "imgs"), "--out", str(out), "--anchors", "none", "--seed", "3"]
    args += ["--codec", "diffc", "--codec-model", "gaussian", "--codec-grid", "num_steps=3"]
    args += ["--decode-opt", "method=denoise", "--model", "gaussian", "--codec-opt", "num_steps=3"]
    result = CliRunner().invoke(app, [*args, "--channels", "rcc", "--methods", "denoise", "--steps", "all"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    full = [r for r in doc["records"] if r["variant"] == "diffc-denoise"]
    prefixes = [r for r in doc["records"] if r["variant"] == "diffc-denoise@num_steps=3"]
    assert len(full) == 2 and len(prefixes) == 2 * 3
    assert {r["family"] for r in prefixes} == {"codec-prefix"} and sorted({r["setting"] for r in prefixes}) == [1, 2, 3]
    for r in prefixes:
        assert r["num_chunks"] == 3 and r["decode_options"] == {"method": "denoise", "recon_steps": 0}
        assert r["estimated_bits"] > 0 and r["bpp"] == pytest.approx(r["bits"] / 256)
    sweep = {(r["image"], r["steps"]): r for r in doc["records"] if r["variant"] == "diffc-rcc-denoise"}
    for r in prefixes:  # both paths charge the same bits: k chunks plus the shape the header codes
        same = sweep[(r["image"], r["setting"])]
        # DiffC stream version 2 at 16x16: 22 dataset-wide bytes plus a one-byte shape
        assert r["stream_header_bytes"] == 23 and r["header_bytes"] == same["header_bytes"] == 1
        assert r["bits"] == same["bits"] == 8 * same["bytes"]
        assert r["estimated_bits"] == pytest.approx(same["kl_bits"])
    (point,) = doc["curves"]["diffc-denoise"]
    assert point["header_bpp"] == pytest.approx(8 / 256) and point["stream_header_bpp"] == pytest.approx(23 * 8 / 256)
    payload = point["bpp"] - point["header_bpp"]
    assert point["payload_over_estimate"] == pytest.approx(payload / point["estimated_bpp"])
    assert {r["image"]: r["stream_sha256"] for r in full} == {im: r["stream_sha256"] for (im, _), r in sweep.items()}
    assert ("diffc-denoise", "diffc-rcc-flow") not in {(b["test"], b["anchor"]) for b in doc["bd_rates"]}  # no flow


def test_eval_progress_prints_a_line_whenever_the_interval_has_passed(tmp_path):
    from diffc_pipeline.evaluation.progress import EvalProgress
    from diffc_pipeline.evaluation.run import EvalOptions, run_eval

    write_images(tmp_path / "imgs", 2, size=16)
    log = io.StringIO()
    opts = EvalOptions(str(tmp_path / "imgs"), tmp_path / "out", anchors=("jpeg",), channels=())
    result = run_eval(opts, EvalProgress(Console(file=log, width=200), every_s=0.0))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("anchors:")]
    assert [line.split(" (")[0] for line in lines] == [f"anchors: {i}/2" for i in (0, 1, 2, 2)]
    assert lines[0].endswith("started") and lines[-1].endswith("done")
    assert result.records == 2 * len(GRIDS["jpeg"]) and (tmp_path / "out" / "results.json").is_file()


def test_eval_diffc_with_the_gaussian_model_counts_real_bytes(tmp_path):
    from diffc_pipeline.seeds import image_seed

    write_images(tmp_path / "imgs", 3, size=16)
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "imgs"), "--out", str(out), "--model", "gaussian", "--anchors", "jpeg"]
    args += ["--codec-opt", "num_steps=8", "--codec-opt", "flow_steps=4", "--codec-opt", "ancestral_steps=4"]
    result = CliRunner().invoke(app, [*args, "--steps", "1,4,8", "--seed", "7", "--diffc-limit", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    diffc = [r for r in doc["records"] if r["family"] == "diffc"]
    on = doc["diffc"]["images"]
    assert on == choose_subset(["im0.png", "im1.png", "im2.png"], 2) and {r["image"] for r in diffc} == set(on)
    assert len(diffc) == 2 * 2 * 3 * 3  # images x channels x methods x prefixes
    assert doc["diffc"]["prefixes"] == [1, 4, 8] and doc["diffc"]["model"]["name"] == "gaussian-rgb"
    assert doc["diffc"]["spec"]["options"] == {"num_steps": 8, "flow_steps": 4, "ancestral_steps": 4}
    assert doc["diffc"]["methods"] == ["flow", "ancestral", "denoise"]  # 'all': the codec's own method names
    # BD-rates and curves compare all codecs on the DiffC images; the full classical curve is kept apart
    assert doc["curves"]["jpeg"][0]["images"] == 2 and doc["curves_all_images"]["jpeg"][0]["images"] == 3

    # the rcc rate is the real stream: the first k chunks of what the registry's codec writes plus the
    # per-image shape; the standalone header is reported apart
    codec = resolve("diffc", {"num_steps": 8}, "gaussian").build()
    first = on[0]
    pixels = np.array(Image.open(tmp_path / "imgs" / first))
    stream = codec.compress(pixels[None], [image_seed(7, first)])[0]
    for k in (1, 4, 8):
        rec = next(r for r in diffc if r["variant"] == "diffc-rcc-flow" and r["image"] == first and r["steps"] == k)
        real = 1 + sum(len(c) for c in stream.chunks[:k])  # stream version 2: a 16x16 shape is one byte
        assert rec["bytes"] == real and rec["header_bytes"] == 1 == stream.parsed.shape_bits // 8
        assert rec["stream_header_bytes"] == len(stream.header) == 23  # stream version 2, 16x16
        assert rec["bpp"] == pytest.approx(8 * real / 256)
        assert rec["kl_bits"] == pytest.approx(sum(stream.estimated_bits[:k]))
    # the ideal rate is the KL of the prefix, no bytes
    ideal = sorted(
        (r for r in diffc if r["variant"] == "diffc-ideal-denoise" and r["image"] == on[1]), key=lambda r: r["steps"]
    )
    assert [r["bytes"] for r in ideal] == [None] * 3
    assert all(r["bpp"] == pytest.approx(r["kl_bits"] / 256) for r in ideal)
    assert ideal[0]["bpp"] < ideal[1]["bpp"] < ideal[2]["bpp"] and ideal[0]["psnr"] < ideal[2]["psnr"]
    pairs = {(b["test"], b["anchor"]) for b in doc["bd_rates"]}
    assert ("diffc-rcc-flow", "diffc-ideal-flow") in pairs and ("diffc-ideal-flow", "jpeg") in pairs
    floors = {(b["test"], b["anchor"]) for b in doc["bd_rates"] if b["from"] == 20.0}
    assert floors == {(f"diffc-rcc-{m}", f"diffc-ideal-{m}") for m in ("flow", "ancestral", "denoise")}
    assert set(doc["flow_minus_ancestral_psnr_db_at_full_rate"]) == {"rcc", "ideal"}
    assert "diffc-rcc-flow" in (out / "index.html").read_text()


def test_eval_and_compress_write_the_same_stream_for_the_same_image_and_seed(ray_cluster, tmp_path):
    import pyarrow.dataset as ds

    from diffc_pipeline.pipeline.archive import chunk_column, row_checksum
    from diffc_pipeline.pipeline.compress_job import CompressOptions, run_compress
    from diffc_pipeline.pipeline.progress import JobProgress

    write_images(tmp_path / "imgs", 2, size=16)
    archive = tmp_path / "archive"
    codec = {"num_steps": "3"}
    opts = CompressOptions(
        str(tmp_path / "imgs"), str(archive), seed=5, model="gaussian", codec_options=codec, actors=1
    )
    summary = run_compress(opts, JobProgress("compress", enabled=False))
    assert summary.images == 2 and summary.failures == 0
    args = ["eval", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--model", "gaussian", "--seed", "5"]
    args += ["--codec-opt", "num_steps=3", "--anchors", "none", "--channels", "rcc", "--methods", "denoise"]
    result = CliRunner().invoke(app, [*args, "--steps", "1,2,3"])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out" / "results.json").read_text())["records"]

    files = [str(p) for p in archive.rglob("*.parquet")]
    rows = ds.dataset(files, format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in rows) == ["im0.png", "im1.png"]
    for row in rows:
        chunks = [row[chunk_column(k)] for k in (1, 2, 3)]
        mine = sorted((r for r in records if r["image"] == row["id"]), key=lambda r: r["steps"])
        assert [r["steps"] for r in mine] == [1, 2, 3]
        assert mine[0]["stream_sha256"] == row_checksum(row["header"], chunks) == row["checksum"]
        assert mine[0]["stream_header_bytes"] == len(row["header"])
        assert [r["bytes"] - r["header_bytes"] for r in mine] == [sum(map(len, chunks[:k])) for k in (1, 2, 3)]


def test_eval_compare_gives_the_bd_rate_between_two_runs_on_the_same_images(tmp_path):
    """Two runs of one codec at two grids of options: the run against itself is 0%, lower WebP qualities
    against higher ones cover an overlap only, a run on other images is refused by name."""
    write_images(tmp_path / "imgs", 2)
    base = ["eval", str(tmp_path / "imgs"), "--channels", "none", "--anchors", "jpeg"]
    for name, grid in (("a", "quality=20,40,60,80"), ("b", "quality=30,50,70,90")):
        r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / name), "--codec", "webp", "--codec-grid", grid])
        assert r.exit_code == 0, r.output
    same = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "a"), "--json"])
    assert same.exit_code == 0, same.output
    rows = json.loads(same.output)
    pairs = {(c, m) for c in ("jpeg", "webp") for m in ("psnr", "ms_ssim_db")}
    assert {(r["curve"], r["metric"]) for r in rows} == pairs
    assert all(r["bd_rate_percent"] == pytest.approx(0.0, abs=1e-9) for r in rows)
    other = CliRunner().invoke(
        app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "b" / "results.json"), "--curve", "webp", "--json"]
    )
    rows = json.loads(other.output)
    assert [r["metric"] for r in rows] == ["psnr", "ms_ssim_db"] and all(r["points"] == [4, 4] for r in rows)
    assert all(abs(r["bd_rate_percent"]) < 15 for r in rows)  # one codec: the same curve, sampled elsewhere
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    lo, hi = rows[0]["overlap"]
    psnrs = [p["psnr"] for p in doc["curves"]["webp"]]
    assert min(psnrs) < lo < hi <= max(psnrs)
    doc["records"] = [r for r in doc["records"] if r["image"] != "im1.png"]
    (tmp_path / "fewer.json").write_text(json.dumps(doc))
    refused = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "fewer.json")])
    assert refused.exit_code == 2 and "on other images" in " ".join(refused.output.split())
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    doc["source"]["url"] = "/elsewhere/imgs"  # the same ids read from another place: compared, with a warning
    (tmp_path / "moved.json").write_text(json.dumps(doc))
    moved = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "moved.json")])
    assert moved.exit_code == 0 and "images are matched by id only" in " ".join(moved.output.split())
    assert "matched by id only" not in CliRunner().invoke(app, ["eval-compare", *[str(tmp_path / "a")] * 2]).output
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    doc["source"]["downsample"] = 2  # the same ids, other pixels: compared silently before
    (tmp_path / "halved.json").write_text(json.dumps(doc))
    refused = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "halved.json")])
    assert refused.exit_code == 2 and "measured on other pixels (--downsample: anchor 1, test 2)" in " ".join(
        refused.output.split()
    )
    missing = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "b"), "--curve", "avif"])
    assert missing.exit_code == 2 and "not in both runs" in " ".join(missing.output.split())
    # --points: each point against the anchor curve; a run's own Pareto points lie on its curve (0%), and
    # b's points against a's curve are their bpp over the rate a's curve needs at their quality
    own_points = CliRunner().invoke(
        app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "a"), "--curve", "web*", "--points", "--json"]
    )
    assert own_points.exit_code == 0, own_points.output
    pts = json.loads(own_points.output)
    assert {(p["curve"], p["metric"]) for p in pts} == {("webp", "psnr"), ("webp", "ms_ssim_db")}
    assert sorted(p["setting"] for p in pts if p["metric"] == "psnr") == [f"quality={q}" for q in (20, 40, 60, 80)]
    assert all(p["excess_percent"] == pytest.approx(0.0, abs=1e-9) for p in pts)
    cross_points = CliRunner().invoke(
        app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "b"), "--curve", "webp", "--points", "--json"]
    )
    a_curve = doc["curves"]["webp"]
    for p in json.loads(cross_points.output):
        need = rate_at_quality([q["bpp"] for q in a_curve], [q[p["metric"]] for q in a_curve], p["quality"])
        if need is None:
            assert p["anchor_bpp"] is None and p["excess_percent"] is None
        else:
            assert p["excess_percent"] == pytest.approx((p["bpp"] / need - 1) * 100)
    assert any(p["excess_percent"] is None for p in json.loads(cross_points.output))  # q=90 is above a's q=80
    unknown = CliRunner().invoke(app, ["eval-compare", str(tmp_path / "a"), str(tmp_path / "a"), "--curve", "x*"])
    assert unknown.exit_code == 2 and "x* is not in both runs" in " ".join(unknown.output.split())
    # --against: a curve of the test run against another curve of the anchor run, as its own run would say
    cross = CliRunner().invoke(
        app,
        ["eval-compare", str(tmp_path / "a"), str(tmp_path / "b"), "--curve", "webp", "--against", "jpeg", "--json"],
    )
    rows = json.loads(cross.output)
    own = {
        b["metric"]: b["bd_rate_percent"]
        for b in json.loads((tmp_path / "b" / "results.json").read_text())["bd_rates"]
        if (b["test"], b["anchor"]) == ("webp", "jpeg") and b["from"] is None
    }
    assert [(r["curve"], r["against"]) for r in rows] == [("webp", "jpeg")] * 2
    assert {r["metric"]: r["bd_rate_percent"] for r in rows} == pytest.approx(own)
    # the table, in an 80-column terminal: long curve names fold whole into their column (no ellipsis), and
    # the against column appears only where a row is compared with another curve than its own
    long = "webp@quality=20,40,60,80-of-a-long-grid"
    for name in ("a", "b"):
        doc = json.loads((tmp_path / name / "results.json").read_text())
        doc["curves"][long] = doc["curves"].pop("webp")
        for r in doc["records"]:
            r["variant"] = long if r.get("variant") == "webp" else r.get("variant")
        (tmp_path / f"{name}-long.json").write_text(json.dumps(doc))
    runs = [str(tmp_path / "a-long.json"), str(tmp_path / "b-long.json")]
    for extra, against_shown in (([], False), (["--against", "jpeg"], True), (["--points"], False)):
        shown = CliRunner().invoke(app, ["eval-compare", *runs, "--curve", long, *extra], env={"COLUMNS": "80"})
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert max(map(len, lines)) <= 80 and "…" not in shown.output
        first_column = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
        assert first_column.startswith(long + long)  # psnr and ms_ssim_db rows, each name whole
        header = " ".join(line for line in lines if line.startswith("┃"))
        assert ("against" in header) == against_shown


def test_eval_summary_tables_show_long_curve_names_whole_in_80_columns():
    """`diffc eval`'s terminal tables fold a long variant name within its column instead of cutting it."""
    name = "cdc-diffusion@temperature=0.8,time_power=2"
    points = [{"bpp": 0.1, "psnr": 25.0, "ms_ssim": 0.9}, {"bpp": 1.0, "psnr": 30.0, "ms_ssim": 0.97}]
    bd = [
        {"test": name, "anchor": "webp", "metric": m, "from": None, "bd_rate_percent": -12.0, "overlap": (24, 30)}
        for m in ("psnr", "ms_ssim_db")
    ]
    for table in summary_tables({name: points, "webp": points}, bd, {}):
        out = io.StringIO()
        Console(file=out, width=80).print(table)
        lines = out.getvalue().splitlines()
        assert max(map(len, lines)) <= 80 and "…" not in out.getvalue()
        first_column = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
        assert first_column.startswith(name)


def test_images_too_small_for_ms_ssim_are_refused_before_any_coding(tmp_path):
    """A 10x10 image failed MS-SSIM after the codecs had run, and the whole run was lost."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(natural_image(0, 16)).save(folder / "ok.png")
    Image.fromarray(natural_image(1, 10)).save(folder / "small.png")
    with pytest.raises(DiffcError, match=r"1 image\(s\) smaller than 11 px on a side.*small\.png"):
        load_eval_images(ImageSource(str(folder)))


def _record(image: str, variant: str, family: str, setting, bpp: float, psnr: float) -> dict:
    r = {"image": image, "height": 64, "width": 64, "psnr": psnr, "ms_ssim": 1 - 10 ** (-psnr / 20),
         "ms_ssim_scales": 3, "detail": 1.0, "variant": variant, "family": family, "bpp": bpp,
         "encode_s": 0.0, "decode_s": 0.0, "bytes": int(bpp * 4096 / 8)}  # fmt: skip
    if family == "classical":
        r["quality"] = setting
    elif family == "diffc":
        r.update(steps=setting, kl_bits=bpp * 4096, header_bytes=None, channel="ideal", method="flow")
    else:
        r.update(setting=setting, header_bytes=4, stream_header_bytes=31, estimated_bits=None)
    return r


def test_a_diffc_subset_run_compares_and_floors_on_its_subset_only(tmp_path):
    """With --diffc-limit every curve averages over the DiffC images, though the anchors' records cover all:
    eval-compare against another run's full-set curve must refuse (it gave +243% for two equal codecs), and
    the anchors' lowest-rate floor is the subset's. A BD-rate that cannot exist says why."""
    from diffc_pipeline.evaluation.compare import compare_runs, load_run
    from diffc_pipeline.evaluation.report import write_outputs
    from diffc_pipeline.evaluation.runner import EvalOutput

    ids = [f"img{i}" for i in range(6)]
    base = {i: 30.0 if i < 2 else 22.0 for i in range(6)}  # the subset (the first two) is easier
    avif = [_record(ids[i], "avif", "classical", q, 0.2 * 2**k, base[i] + 3 * k)
            for i in range(6) for k, q in enumerate((10, 30, 50, 70))]  # fmt: skip
    diffc = [_record(ids[i], "diffc-ideal-flow", "diffc", s, 0.1 * 2**k, base[i] + 3 * k)
             for i in range(2) for k, s in enumerate((8, 16, 24, 32))]  # fmt: skip
    lowest = [{"image": ids[i], "variant": "avif", "bytes": 1, "quality": 0, "bpp": 0.1 if i < 2 else 0.9}
              for i in range(6)]  # fmt: skip
    meta = {"source": {"downsample": 1, "tile": None}}
    write_outputs(tmp_path / "a", meta, EvalOutput(avif + diffc, lowest, None, ids[:2]), "A")
    cdc = [_record(ids[i], "cdc-mean", "codec", f"rate={k}", 0.2 * 2**k, base[i] + 3 * k)
           for i in range(6) for k in range(4)]  # fmt: skip
    write_outputs(tmp_path / "b", meta, EvalOutput(cdc, [], None, None), "B")
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert a["curve_images"] == ids[:2] and b["curve_images"] is None
    with pytest.raises(InvalidInputError, match=r"'cdc-mean' was measured on other images than 'avif'.*6 vs 2"):
        compare_runs(a, b, ["cdc-mean"], against="avif")
    floor = a["lowest_rate"]["avif"]
    assert floor["images"] == 2 and floor["mean_lowest_bpp"] == pytest.approx(0.1)

    one_point = [_record(ids[i], "cdc-mean", "codec", "rate=0", 0.4, 25.0) for i in range(6)]
    write_outputs(tmp_path / "c", meta, EvalOutput(avif + one_point, [], None, None), "C")
    notes = {(e["test"], e["anchor"]): e["note"] for e in load_run(tmp_path / "c")["bd_rates"]}
    assert "1 point: no curve" in notes[("cdc-mean", "avif")], notes
