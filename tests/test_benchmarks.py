"""The benchmark commands' own arithmetic, on cheap settings (the measurements themselves are in docs/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffc_pipeline.benchmarks.speed import measure_speed
from diffc_pipeline.cli import app
from diffc_pipeline.codecs import resolve
from diffc_pipeline.codecs.diffc.codec import DiffcCodec
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.models import load_model, save_unet_model
from diffc_pipeline.models.unet import UNet, UNetConfig


def test_speed_accounts_for_encode_time_and_real_bytes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    # a fixed small channel, so the test does not move with the default, and a small real U-Net: the analytic
    # Gaussian model's network time rounds to a 0.000 share on a busy machine
    config = CodecConfig(num_steps=3, chunk_bits=8, candidate_log2=12, target_gain=1.25)
    torch.manual_seed(0)
    net = UNet(UNetConfig(widths=(16, 16), blocks_per_level=1, emb_dim=32, groups=8))
    save_unet_model(tmp_path, net, {"kind": "linear", "gamma_min": -13.3, "gamma_max": 5.0}, name="tiny")
    result = measure_speed(DiffcCodec(load_model(str(tmp_path)), config), images, batch_size=2)
    assert (result["size"], result["images"], result["batch"]) == ("16x16", 3, 2)
    network, channel = result["encode_network_share"], result["encode_channel_share"]
    assert 0 < network < 1 and 0 < channel < 1 and network + channel <= 1.0
    assert result["encode_s_per_image"] * result["encode_img_per_s"] == pytest.approx(1.0, rel=0.01)
    assert set(result["decode_img_per_s"]) == {"flow", "ancestral", "denoise"}  # every value of 'method'
    assert result["bpp"] > 0


def test_speed_of_a_classical_codec_counts_its_files():
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    codec = resolve("jpeg", {"quality": "50"}).build()
    result = measure_speed(codec, images, batch_size=2)
    files = [len(e.chunks[0]) for e in codec.compress(images, [0, 1])]
    assert result["bpp"] == pytest.approx(8 * sum(files) / (2 * 16 * 24), abs=1e-4)
    assert set(result["decode_img_per_s"]) == {"default"} and "encode_network_share" not in result


def test_bench_speed_cli_writes_its_json(tmp_path):
    out = tmp_path / "speed.json"
    args = ["bench", "speed", "--images", "1", "--batch-size", "1", "--threads", "1", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["codec"]["model"]["name"].startswith("diffc-unet-tin64") and doc["runs"][0]["size"] == "64x64"
    assert doc["command"].startswith("diffc ")


def test_bench_network_times_layouts_and_precisions_and_measures_memory_in_fresh_processes(tmp_path):
    torch.manual_seed(0)
    net = UNet(UNetConfig(widths=(16, 16), blocks_per_level=1, emb_dim=32, groups=8))
    save_unet_model(tmp_path / "m", net, {"kind": "linear", "gamma_min": -13.3, "gamma_max": 5.0}, name="tiny")
    out = tmp_path / "net.json"
    args = ["bench", "network", "--model", str(tmp_path / "m"), "--threads", "1", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "--memory-sides", "64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    shapes = [(r["batch"], r["height"], r["width"]) for r in data["timing"]]
    assert shapes == [(16, 64, 64), (1, 256, 256), (1, 320, 480)]
    assert all(r["contiguous_ms_per_mp"] > 0 and r["channels_last_speedup"] > 0 for r in data["timing"])
    assert all(r["bfloat16_ms_per_mp"] > 0 and r["bfloat16_channels_last_speedup"] > 0 for r in data["timing"])
    assert [m["tiled"] for m in data["memory"]] == [True, False]
    assert all(m["peak_gb"] >= m["before_gb"] > 0 for m in data["memory"])


@pytest.mark.data
def test_bench_prior_variance_cli_measures_both_image_sets(tmp_path):
    out = tmp_path / "pv.json"
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    args = ["bench", "prior-variance", "--images", "2", "--data", str(data / "tinyimagenet" / "val")]
    args += ["--tiles", str(data / "cbsd68"), "--tile-count", "1"]
    args += ["--step-kl", "50", "--seeds", "1", "--norm-gains", "1.0", "--model", "gaussian", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc["rates"]) == {"tinyimagenet_val", "cbsd68_tiles"}
    assert [r["variant"] for r in doc["fidelity"]] == ["default", "widened, norm gain 1.0"]


def test_bench_large_image_takes_one_photo_through_compress_and_decode(tmp_path, monkeypatch):
    """The end-to-end large-image benchmark on a cheap setting (a sample scaled to 200x120, WebP): the input is
    scaled as asked, both jobs run with one actor whose peak memory is sampled, and the decoded image is
    compared with the input."""
    from diffc_pipeline.benchmarks import large_image
    from diffc_pipeline.benchmarks.pipeline import peak_rss
    from diffc_pipeline.samples import SAMPLES_DIR

    # The benchmark samples once a second; on this cheap setting an actor lives about 1.5 s and is under 200 MB
    # for its first 0.3 s (its imports), so a second's sampling could see it only then, or (faster machine) miss
    # it. Every 50 ms it is seen after its imports (VmHWM, the kernel's peak, keeps what happened between).
    monkeypatch.setattr(large_image, "peak_rss", lambda interval_s, **kw: peak_rss(interval_s=0.05, **kw))
    out = tmp_path / "large.json"
    photo = str(SAMPLES_DIR / "cbsd68_101085_crop96.png")
    args = ["bench", "large-image", photo, "--size", "200x120", "--codec", "webp", "--codec-opt", "quality=90"]
    result = CliRunner().invoke(app, [*args, "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (doc["width"], doc["height"], doc["threads"]) == (200, 120, 1)
    assert doc["codec"]["options"] == {"quality": 90}
    assert doc["decode"]["bpp"] == pytest.approx(doc["compress"]["bpp"]) and doc["compress"]["bpp"] > 0
    assert doc["decode"]["psnr_db"] > 30
    # the model actors' own peaks (a Ray worker with torch and numpy loaded holds more than 200 MB)
    assert doc["compress"]["peak_actor_rss_mb"] > 200 and doc["decode"]["peak_actor_rss_mb"] > 200
    for size in ("200by120", "0x120"):
        bad = CliRunner().invoke(app, ["bench", "large-image", photo, "--size", size])
        assert bad.exit_code != 0 and "--size must be WxH" in bad.output and "Traceback" not in bad.output
    again = CliRunner().invoke(app, [*args, "--work-dir", str(tmp_path / "work")])  # would resume: refused
    assert again.exit_code != 0 and "is not empty" in again.output and "Traceback" not in again.output


def test_benchmark_arguments_are_checked_before_any_work():
    """Malformed settings and lists ended in ValueError tracebacks, some after minutes of measuring."""
    from typer.testing import CliRunner

    from diffc_pipeline.cli import app

    cases = [
        (["bench", "rcc", "--configs", "xyz"], "channel setting 'xyz'"),
        (["bench", "rcc", "--repeats", "0"], "Invalid value"),
        (["bench", "pipeline", "--sizes", "abc"], "--sizes 'abc'"),
        (["bench", "network", "--threads", "abc"], "--threads 'abc'"),
        (["bench", "channel-fidelity", "1:2"], "channel setting '1:2'"),
        (["bench", "channel-fidelity", "--versions", "7"], "stream versions are 1 and 2"),
        (["bench", "channel-fidelity", "--step-kl", "abc"], "--step-kl 'abc'"),
    ]
    for args, why in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and why in " ".join(result.output.split()), (args, result.output)


def test_bench_incremental_compares_a_listing_with_an_index_of_two_versions(tmp_path):
    out = tmp_path / "inc.json"
    result = CliRunner().invoke(app, ["bench", "incremental", "--images", "2000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (doc["images"], doc["index_rows"], doc["unchanged"]) == (2000, 3000, 2000)
    assert doc["compare_s"] > 0 and doc["peak_rss_mb"] > 0 and doc["command"].startswith("diffc ")
