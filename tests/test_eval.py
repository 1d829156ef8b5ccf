"""``diffc eval``: BD-rate, metrics, classical codecs, image selection and the written report."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.evaluation.bdrate import bd_rate, pareto_front
from diffc_pipeline.evaluation.classical import CODECS, encode_decode, lowest_rate
from diffc_pipeline.evaluation.data import ImageSource, choose_subset, load_eval_images
from diffc_pipeline.evaluation.metrics import (
    DETAIL_RATIO_MAX,
    PSNR_LOSSLESS_DB,
    detail_ratio,
    ms_ssim,
    ms_ssim_scales,
    psnr,
)


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


# --- classical codecs ---


@pytest.mark.parametrize("name", list(CODECS))
def test_classical_bpp_is_the_file_size(name, tmp_path):
    img = natural_image(0)
    spec = CODECS[name]
    point = encode_decode(img, spec, 40)
    path = tmp_path / f"x.{name}"
    Image.fromarray(img).save(path, spec.pillow_format, quality=40, **spec.options)
    assert len(point.data) == path.stat().st_size
    assert point.bpp(32 * 32) == len(point.data) * 8 / (32 * 32)
    assert point.reconstruction.shape == img.shape and point.reconstruction.dtype == np.uint8
    assert 15 < psnr(img, point.reconstruction) < PSNR_LOSSLESS_DB


@pytest.mark.parametrize("name", ["webp", "avif"])
def test_lowest_rate_is_the_smallest_file_at_any_quality(name):
    img = natural_image(1)
    spec = CODECS[name]
    sizes = {}
    for q in range(0, 101):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, spec.pillow_format, quality=q, **spec.options)
        sizes[q] = buf.tell()
    size, quality = lowest_rate(img, spec)
    assert size == min(sizes.values())
    assert sizes[quality] == size


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


# --- the command ---


def write_images(folder: Path, count: int, size: int = 32) -> None:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(natural_image(i, size)).save(folder / f"im{i}.png")


def test_eval_classical_only_writes_all_outputs(tmp_path):
    write_images(tmp_path / "imgs", 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "imgs"), "--out", str(out), "--channels", "none"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    expected = 3 * sum(len(c.qualities) for c in CODECS.values())
    assert len(doc["records"]) == expected
    assert {r["image"] for r in doc["records"]} == {"im0", "im1", "im2"}
    for r in doc["records"]:
        assert r["bpp"] == pytest.approx(8 * r["bytes"] / (32 * 32))
        assert 0 < r["ms_ssim"] <= 1 and r["psnr"] > 10 and r["ms_ssim_scales"] == 2 and 0 < r["detail"] < 5
    assert len(doc["lowest_rate_per_image"]) == 9
    for name, summary in doc["lowest_rate"].items():
        per_image = [r["bpp"] for r in doc["lowest_rate_per_image"] if r["variant"] == name]
        swept = [r["bpp"] for r in doc["records"] if r["variant"] == name]
        assert summary["mean_lowest_bpp"] == pytest.approx(np.mean(per_image))
        assert min(per_image) <= min(swept)
    assert set(doc["curves"]) == set(CODECS)
    assert len(doc["curves"]["jpeg"]) == len(CODECS["jpeg"].qualities)
    assert doc["params"]["channels"] == "none" and doc["params"]["out"] == str(out) and doc["command"]
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


def test_eval_diffc_with_the_gaussian_model_counts_real_bytes(tmp_path):
    from diffc_pipeline.codec import CodecConfig, DiffcCodec
    from diffc_pipeline.evaluation.runner import PER_IMAGE_BYTES, image_seed
    from diffc_pipeline.models import load_model

    write_images(tmp_path / "imgs", 3, size=16)
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "imgs"), "--out", str(out), "--model", "gaussian", "--codecs", "jpeg"]
    result = CliRunner().invoke(app, [*args, "--steps", "1,4,16", "--seed", "7", "--diffc-limit", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    diffc = [r for r in doc["records"] if r["family"] == "diffc"]
    on = doc["diffc"]["images"]
    assert on == choose_subset(["im0", "im1", "im2"], 2) and {r["image"] for r in diffc} == set(on)
    assert len(diffc) == 2 * 2 * 3 * 3  # images x channels x methods x prefixes
    assert doc["diffc"]["prefixes"] == [1, 4, 16] and doc["diffc"]["model"]["name"] == "gaussian-rgb"
    # BD-rates and curves compare all codecs on the DiffC images; the full classical curve is kept apart
    assert doc["curves"]["jpeg"][0]["images"] == 2 and doc["curves_all_images"]["jpeg"][0]["images"] == 3

    # the rcc rate is the real stream: the first k chunks of what compress() writes plus the per-image shape;
    # the standalone header is reported apart
    codec = DiffcCodec(load_model("gaussian"), CodecConfig(), channel="rcc")
    first = on[0]
    pixels = np.array(Image.open(tmp_path / "imgs" / f"{first}.png"))
    stream = codec.compress(torch.from_numpy(pixels).permute(2, 0, 1)[None], [image_seed(first, 7)])[0]
    for k in (1, 4, 16):
        rec = next(r for r in diffc if r["variant"] == "diffc-rcc-flow" and r["image"] == first and r["steps"] == k)
        real = PER_IMAGE_BYTES + sum(len(c) for c in stream.chunks[:k])
        assert rec["bytes"] == real and rec["header_bytes"] == 4 == PER_IMAGE_BYTES
        assert rec["stream_header_bytes"] == len(stream.header) == 26
        assert rec["bpp"] == pytest.approx(8 * real / 256)
        assert rec["kl_bits"] == pytest.approx(sum(stream.step_kl_bits[:k]))
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


def test_eval_on_ray_workers_gives_the_in_process_records(ray_cluster, tmp_path):
    write_images(tmp_path / "imgs", 2, size=16)
    args = ["eval", str(tmp_path / "imgs"), "--model", "gaussian", "--codecs", "none", "--channels", "rcc"]
    args += ["--methods", "denoise,ancestral", "--steps", "1,3", "--batch-size", "1", "--codec", "ancestral_steps=3"]
    here = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "here")])
    assert here.exit_code == 0, here.output
    on_ray = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ray"), "--workers", "2", "--threads", "1"])
    assert on_ray.exit_code == 0, on_ray.output

    def records(name: str) -> list[dict]:
        doc = json.loads((tmp_path / name / "results.json").read_text())
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in doc["records"]]

    assert records("ray") == records("here") and len(records("here")) == 2 * 2 * 2  # images x prefixes x methods
    # the workers reconstruct with the --codec settings, not the defaults
    doc = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert doc["diffc"]["codec_config"]["ancestral_steps"] == 3
    assert "diffc-rcc-denoise" in (tmp_path / "ray" / "index.html").read_text()
