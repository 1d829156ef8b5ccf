"""Training (loss goes down, exact resume, export) and the NELBO evaluation behind ``diffc model eval``."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.errors import DiffcError
from diffc_pipeline.models import LinearSchedule, ModelIdentity, load_model, save_unet_model
from diffc_pipeline.models.unet import UNetConfig
from diffc_pipeline.models.unet_model import UNetDiffusionModel
from diffc_pipeline.training.data import BatchSampler, load_encoded_images
from diffc_pipeline.training.evaluate import EvalConfig, evaluate
from diffc_pipeline.training.trainer import TrainConfig, Trainer
from diffc_pipeline.training.vdm import diffusion_loss, nats_to_bpd, prior_loss

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyimagenet" / "val"
TINY = UNetConfig(widths=(16, 16), blocks_per_level=1, emb_dim=32, groups=8).to_dict()
CONFIG = TrainConfig(batch_size=8, crop=16, lr=3e-3, warmup_steps=1, seed=0, unet=TINY)


pytestmark = pytest.mark.usefixtures("one_thread")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def generated_images(n: int, size: int = 16, seed: int = 0) -> list[bytes]:
    """Smooth random colour fields with some texture: enough structure for a U-Net to learn from."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + yy)))[..., None]
        img = np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        out.append(_png(img))
    return out


@pytest.fixture(scope="module")
def tiny_set() -> list[bytes]:
    """32 real Tiny ImageNet val images when ../shared is present, else generated ones (tests still run)."""
    if VAL.is_dir():
        return load_encoded_images(str(VAL), limit=32)
    return generated_images(32, size=64)


def _fixed_batch_bpd(trainer: Trainer, x: torch.Tensor) -> float:
    """VDM loss (bits/dim) of the current weights on a fixed batch, t and noise: comparable over time."""
    trainer.net.eval()
    with torch.no_grad():
        total = 0.0
        for rep in range(4):
            gen = torch.Generator().manual_seed(1000 + rep)
            nats = diffusion_loss(trainer.net, x, trainer.schedule, gen) + prior_loss(x, trainer.schedule)
            total += float(nats_to_bpd(nats.mean(), x[0].numel()))
    return total / 4


def test_a_few_steps_reduce_the_loss(tiny_set: list[bytes]) -> None:
    trainer = Trainer(replace(CONFIG, lr=1e-2), tiny_set)
    x = BatchSampler(tiny_set, 16, 16, seed=123).batch(0)  # images and crops the trainer does not draw
    before = _fixed_batch_bpd(trainer, x)
    for _ in range(25):
        trainer.train_step()
    after = _fixed_batch_bpd(trainer, x)
    # seen here: 13.3 -> 11.9 bits/dim on real and on generated images (untrained: eps_hat = 0)
    assert after < before - 0.7, (before, after)


def _all_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"net.{k}": v for k, v in trainer.net.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in trainer.ema.state_dict().items()}
    for idx, state in trainer.opt.state_dict()["state"].items():
        out |= {f"opt.{idx}.{k}": torch.as_tensor(v) for k, v in state.items()}
    return out


def test_resume_is_exact(tiny_set: list[bytes], tmp_path: Path) -> None:
    straight = Trainer(CONFIG, tiny_set)
    losses_straight = [straight.train_step() for _ in range(4)]

    first = Trainer(CONFIG, tiny_set)
    losses = [first.train_step() for _ in range(2)]
    first.save(tmp_path / "ckpt")
    resumed = Trainer(CONFIG, tiny_set)
    resumed.load(tmp_path / "ckpt")
    assert resumed.state.step == 2
    losses += [resumed.train_step() for _ in range(2)]

    assert losses == losses_straight
    a, b = _all_tensors(straight), _all_tensors(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def test_a_save_killed_between_its_two_renames_loses_no_checkpoint(tiny_set: list[bytes], tmp_path: Path) -> None:
    """A kill after ``checkpoint`` became ``checkpoint.old`` and before ``checkpoint.tmp`` became ``checkpoint``
    left no checkpoint: the next run started from step 0 and its first save deleted ``.old``."""
    from diffc_pipeline.training.checkpointing import recover_checkpoint
    from diffc_pipeline.training.trainer import checkpoint_step

    trainer = Trainer(CONFIG, tiny_set)
    trainer.train_step()
    ckpt = tmp_path / "checkpoint"
    trainer.save(ckpt)
    trainer.train_step()
    trainer.save(tmp_path / "next")
    (tmp_path / "next").rename(tmp_path / "checkpoint.tmp")  # step 2, written in full
    ckpt.rename(tmp_path / "checkpoint.old")  # step 1: the kill came here
    recover_checkpoint(ckpt)
    assert checkpoint_step(ckpt) == 2 and not (tmp_path / "checkpoint.tmp").exists()
    shutil.rmtree(ckpt)
    recover_checkpoint(ckpt)  # with no .tmp, the previous checkpoint is what is left
    assert checkpoint_step(ckpt) == 1


def test_a_phase_of_other_crops_resumes_exactly_and_cannot_be_rewritten(tiny_set: list[bytes], tmp_path: Path) -> None:
    """Whole images late in a run: a phase from step 2 on trains on 8x8 crops, batch 4; resuming across it
    gives the run that had the phase from the start, bit for bit."""
    phased = CONFIG.with_batch_shape(2, 4, 8)
    assert phased.phases == [{"from_step": 2, "batch_size": 4, "crop": 8}]
    assert [phased.batch_shape_at(s) for s in (0, 1, 2, 9)] == [(8, 16), (8, 16), (4, 8), (4, 8)]
    assert phased.with_batch_shape(5, None, 8) is phased  # nothing new: no phase
    straight = Trainer(phased, tiny_set)
    losses_straight = [straight.train_step() for _ in range(4)]
    assert straight._sampler_at(3).batch(3).shape == (4, 3, 8, 8)

    first = Trainer(CONFIG, tiny_set)
    losses = [first.train_step() for _ in range(2)]
    first.save(tmp_path / "ckpt")
    resumed = Trainer(CONFIG.with_batch_shape(2, 4, 8), tiny_set)
    resumed.load(tmp_path / "ckpt")
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == losses_straight
    a, b = _all_tensors(straight), _all_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)

    resumed.save(tmp_path / "ckpt")  # the checkpoint now holds the phase: dropping or moving it is refused
    with pytest.raises(DiffcError, match="different phases"):
        Trainer(CONFIG, tiny_set).load(tmp_path / "ckpt")
    with pytest.raises(DiffcError, match="different phases"):
        Trainer(CONFIG.with_batch_shape(3, 4, 8), tiny_set).load(tmp_path / "ckpt")
    with pytest.raises(DiffcError, match="a phase already starts at or after step 2"):
        phased.with_batch_shape(2, 2, 8)


def test_a_photo_stream_mixes_into_every_batch_and_resumes_exactly(tiny_set: list[bytes], tmp_path: Path) -> None:
    """Crops of larger photos (a second stream, its own draws) enter the loss beside the main batch; a phase
    grows the photo crops; resuming across it is bit for bit the straight run."""
    photos = generated_images(6, size=48, seed=5)
    mixed = replace(CONFIG, photo_batch=2, photo_crop=24).with_batch_shape(2, None, None, photo_batch=1, photo_crop=32)
    assert mixed.phases == [{"from_step": 2, "batch_size": 8, "crop": 16, "photo_batch": 1, "photo_crop": 32}]
    assert [mixed.shape_at(s)["photo_crop"] for s in (0, 1, 2, 5)] == [24, 24, 32, 32]
    straight = Trainer(mixed, tiny_set, photos)
    losses_straight = [straight.train_step() for _ in range(4)]
    assert straight._photo_sampler_at(3).batch(3).shape == (1, 3, 32, 32)
    # the main stream draws what it drew without photos: the photo stream is independent
    plain = BatchSampler(tiny_set, 8, 16, seed=0).batch(1)
    assert torch.equal(straight._sampler_at(1).batch(1), plain)
    assert not torch.equal(straight._photo_sampler_at(1).batch(1)[:, :, :16, :16], plain[:1])

    first = Trainer(replace(CONFIG, photo_batch=2, photo_crop=24), tiny_set, photos)
    losses = [first.train_step() for _ in range(2)]
    first.save(tmp_path / "ckpt")
    resumed = Trainer(mixed, tiny_set, photos)
    resumed.load(tmp_path / "ckpt")
    losses += [resumed.train_step() for _ in range(2)]
    assert losses == losses_straight
    a, b = _all_tensors(straight), _all_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DiffcError, match="pass --photos"):
        Trainer(mixed, tiny_set).train_step()
    Trainer(mixed, tiny_set).export(tmp_path / "exported")  # exporting needs no data


def test_a_run_can_start_from_a_model_and_says_so(tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    source = Trainer(CONFIG, generated_images(4))
    source.train_step()
    source.export(tmp_path / "source")
    identity = load_model(str(tmp_path / "source")).identity
    args = ["train", "--data", str(samples), "--out", str(tmp_path / "run"), "--threads", "1", "--max-steps", "1"]
    started = CliRunner().invoke(app, [*args, "--init-from", str(tmp_path / "source"), "--batch-size", "2"])
    assert started.exit_code == 0, started.output
    assert f"new run from the weights of {identity.name}@{identity.sha256[:12]}" in started.output
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert saved["config"]["init_from"] == {"name": identity.name, "sha256": identity.sha256}
    assert saved["config"]["unet"] == TINY  # the architecture is the model's, not the default
    exported = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert exported["init_from"]["sha256"] == identity.sha256
    again = CliRunner().invoke(app, [*args, "--init-from", str(tmp_path / "source")])
    assert again.exit_code == 2 and "--init-from starts a new run" in " ".join(again.output.split())


def test_resume_refuses_a_config_that_changes_the_weights_meaning(tiny_set: list[bytes], tmp_path: Path) -> None:
    trainer = Trainer(CONFIG, tiny_set)
    trainer.train_step()
    trainer.save(tmp_path / "ckpt")
    with pytest.raises(DiffcError, match=r"crop \(checkpoint 16, requested 8\)"):
        Trainer(replace(CONFIG, crop=8), tiny_set).load(tmp_path / "ckpt")
    cooled = Trainer(replace(CONFIG, lr=1e-3, decay_start=1, decay_end=3), tiny_set)
    cooled.load(tmp_path / "ckpt")  # the learning rate is the optimiser's business: allowed
    assert [cooled.lr_at(s) for s in (0, 1, 2, 3, 9)] == pytest.approx([1e-3, 1e-3, 5e-4, 0.0, 0.0])


def test_train_cli_resumes_with_the_checkpoint_settings(tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    args = ["train", "--data", str(samples), "--out", str(tmp_path), "--threads", "1"]
    first = CliRunner().invoke(app, [*args, "--max-steps", "1", "--batch-size", "4", "--crop", "16", "--seed", "3"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, [*args, "--max-steps", "2", "--decay-start", "1", "--decay-end", "5"])
    assert again.exit_code == 0, again.output
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["step"] == 2
    assert (saved["config"]["batch_size"], saved["config"]["crop"], saved["config"]["seed"]) == (4, 16, 3)
    assert (saved["config"]["decay_start"], saved["config"]["decay_end"]) == (1, 5)
    refused = CliRunner().invoke(app, [*args, "--max-steps", "3", "--seed", "4"])
    assert refused.exit_code == 2 and "cannot resume with a different seed" in " ".join(refused.output.split())
    phased = CliRunner().invoke(app, [*args, "--max-steps", "3", "--crop", "8"])  # a phase from step 2
    assert phased.exit_code == 0 and "phase from step 2: batch 4, crop 8" in phased.output
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert saved["step"] == 3 and saved["config"]["phases"] == [{"from_step": 2, "batch_size": 4, "crop": 8}]
    assert saved["config"]["crop"] == 16  # the base stays what steps 0-1 trained on


def test_sigterm_stops_training_with_a_checkpoint(tmp_path: Path) -> None:
    """A scheduler's SIGTERM ends `diffc train` cleanly: exit 0 and a checkpoint at the step it reached."""
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    cmd = [sys.executable, "-m", "diffc_pipeline", "train", "--data", str(samples), "--out", str(tmp_path)]
    cmd += ["--threads", "1", "--batch-size", "2", "--crop", "16", "--minutes", "10", "--checkpoint-minutes", "60"]
    # TTY_COMPATIBLE=0: the plain log lines waited for below even where CI forces colour (else a live bar)
    env = {**os.environ, "TTY_COMPATIBLE": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watchdog = threading.Timer(300, proc.kill)  # a loop that never logs step 50 fails the test, not the session
    watchdog.start()
    seen: list[str] = []
    try:
        # The loop's log line at step 50: its signal handler is installed and steps are done. (A fixed sleep
        # after start-up raced both on a slow machine: a SIGTERM before the handler kills the process.)
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("step 50 "):
                break
        else:
            pytest.fail("the training loop never logged step 50:\n" + "".join(seen))
        assert not (tmp_path / "checkpoint").exists()  # no periodic checkpoint yet: the final one is the signal's
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0, "".join(seen) + output
    step = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"]
    assert step >= 50 and f"stopped by SIGTERM at step {step}" in " ".join(output.split())


def test_export_cli_writes_the_ema_weights(tiny_set: list[bytes], tmp_path: Path) -> None:
    trainer = Trainer(CONFIG, tiny_set)
    for _ in range(2):
        trainer.train_step()
    trainer.save(tmp_path / "ckpt")
    result = CliRunner().invoke(
        app, ["model", "export", str(tmp_path / "ckpt"), str(tmp_path / "model"), "--fp16", "--name", "tiny"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["dtype"] == "float16" and config["trained_steps"] == 2
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(weights[name], value.half()), name
    assert load_model(str(tmp_path / "model")).identity.name == "tiny"


def test_export_cli_rejects_a_non_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["model", "export", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a training checkpoint" in " ".join(result.output.split())


# ---- evaluation ---------------------------------------------------------------------------------------


class OffsetOracle:
    """A model whose denoised estimate is off by ``c * s/a`` everywhere: its NELBO terms are known exactly.

    With ``x_hat = x0 + c s/a`` for data ``x0``, ``e^-g |x - x_hat|^2 = D c^2`` at every noise level, so the
    continuous-time diffusion term is ``0.5 D c^2 (g_max - g_min)`` and the K-step one
    ``0.5 D c^2 K (e^{(g_max - g_min)/K} - 1)``, whatever noise and ``t`` the estimators draw.
    """

    channels = 3
    pad_multiple = 8
    identity = ModelIdentity("offset-oracle", "0" * 64)
    schedule = LinearSchedule()

    def __init__(self, x0: float, c: float) -> None:
        self.x0, self.c = x0, c

    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        ls = logsnr.view(-1, 1, 1, 1)
        a, s = torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls).sqrt()
        return (z - a * (self.x0 + self.c * s / a)) / s


def test_evaluation_matches_the_exact_bound_of_a_known_model() -> None:
    gray = _png(np.full((16, 16, 3), 128, np.uint8))
    c, span = 0.01, LinearSchedule().gamma_max - LinearSchedule().gamma_min
    config = EvalConfig(t_samples=3, steps=(4, 10), grid=9, codec=((-5.0, 5.0, 16),))
    result = evaluate(OffsetOracle(128 / 127.5 - 1, c), [gray] * 5, config)
    per_dim = 0.5 * c * c / math.log(2)
    assert result.images == 5 and result.dims == 768
    assert math.isclose(result.continuous.diffusion_bpd, per_dim * span, rel_tol=1e-2)
    for bound, k in zip(result.discrete, (4, 10), strict=True):
        assert bound.steps == k
        assert math.isclose(bound.diffusion_bpd, per_dim * k * math.expm1(span / k), rel_tol=1e-2)
    cont = result.continuous
    assert math.isclose(cont.bpd, cont.diffusion_bpd + cont.prior_bpd + cont.reconstruction_bpd)
    assert math.isclose(result.quadrature_bpd, cont.bpd, rel_tol=1e-2)
    rates = [row["bpd_from_1"] for row in result.by_t]
    assert rates == sorted(rates, reverse=True) and math.isclose(rates[-1], cont.prior_bpd)
    # codec-style: 16 steps of 10/16 in log-SNR each, no prior (the start is shared noise)
    (codec,) = result.codec
    assert math.isclose(codec["bpd"], per_dim * 16 * math.expm1(10 / 16), rel_tol=1e-2)
    assert math.isclose(codec["bpp"], 3 * codec["bpd"])
    assert math.isclose(codec["mse_x_end"], c * c * math.exp(-5.0), rel_tol=1e-2)


def test_model_eval_cli_writes_every_figure(tmp_path: Path) -> None:
    identity = save_unet_model(tmp_path / "model", Trainer(CONFIG, []).ema, LinearSchedule().to_dict(), name="t")
    (tmp_path / "images").mkdir()
    for i, data in enumerate(generated_images(5)):
        (tmp_path / "images" / f"{i}.png").write_bytes(data)
    args = ["model", "eval", "--data", str(tmp_path / "images"), "--model", str(tmp_path / "model"),
            "--limit", "5", "--steps", "4", "--steps", "8", "--t-samples", "2", "--grid", "3",
            "--batch-size", "4", "--json", str(tmp_path / "eval.json")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["model"]["sha256"] == identity.sha256 and report["model"]["params"] > 0
    assert report["images"] == 5 and report["dims"] == 3 * 16 * 16
    assert report["command"] and report["date"].startswith("20")  # how it was made (sys.argv), and when
    bounds = [report["continuous"], *report["discrete"]]
    assert [b["steps"] for b in bounds] == [None, 4, 8]
    for b in bounds:
        assert b["bpd"] > 0 and math.isclose(
            b["bpd"], b["diffusion_bpd"] + b["prior_bpd"] + b["reconstruction_bpd"], rel_tol=1e-9
        )
    assert [row["t"] for row in report["by_t"]] == [0.0, 0.5, 1.0]
    assert set(report["by_t"][0]) == {"t", "gamma", "mse_x", "psnr_db", "bpd_per_gamma", "bpd_from_1"}
    assert "continuous" in result.output and "8 steps" in result.output
    # by default the codec's own schedule is evaluated too
    codec_config = CodecConfig()
    (codec,) = report["codec"]
    assert (codec["logsnr_start"], codec["logsnr_end"], codec["steps"]) == (
        codec_config.logsnr_start,
        codec_config.logsnr_end,
        codec_config.num_steps,
    )
    assert codec["bpd"] > 0 and codec["psnr_denoised_db"] > 0


def test_eval_is_reproducible_from_its_seed(tiny_set: list[bytes]) -> None:
    model = UNetDiffusionModel(Trainer(CONFIG, []).ema, LinearSchedule(), ModelIdentity("t", "0" * 64))
    config = EvalConfig(t_samples=1, steps=(4,), grid=0, batch_size=4)
    a = evaluate(model, tiny_set[:4], config)
    b = evaluate(model, tiny_set[:4], config)
    c = evaluate(model, tiny_set[:4], replace(config, seed=1))
    assert a.continuous == b.continuous and a.discrete == b.discrete
    assert a.continuous.bpd != c.continuous.bpd


def test_model_export_and_resume_name_a_damaged_checkpoint_and_refuse_odd_destinations(tiny_set, tmp_path) -> None:
    trainer = Trainer(CONFIG, tiny_set)
    trainer.train_step()
    ckpt = tmp_path / "run" / "checkpoint"
    trainer.save(ckpt)
    (tmp_path / "afile.png").write_bytes(b"mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"mine")
    for out, why in (
        (tmp_path / "afile.png", "is a file"),
        (ckpt, "lies inside the checkpoint"),  # config.json and weights went into the checkpoint itself
        (tmp_path / "photos", "holds other files"),  # ... or into a folder of images
        (tmp_path / "nowhere", "is not a training checkpoint"),
    ):
        source = tmp_path / "nowhere" if why.startswith("is not") else ckpt
        result = CliRunner().invoke(app, ["model", "export", str(source), str(out)])
        assert result.exit_code == 2 and why in " ".join(result.output.split()), (out, result.output)
    assert (tmp_path / "afile.png").read_bytes() == b"mine" and sorted(
        p.name for p in (tmp_path / "photos").iterdir()
    ) == ["a.png"]
    (ckpt / "state.json").write_text("{")  # cut short
    result = CliRunner().invoke(app, ["model", "export", str(ckpt), str(tmp_path / "m")])
    assert result.exit_code == 2 and "cannot be read (JSONDecodeError" in " ".join(result.output.split())
    images = tmp_path / "imgs"
    images.mkdir()
    for i, data in enumerate(tiny_set[:2]):
        (images / f"{i}.png").write_bytes(data)
    result = CliRunner().invoke(
        app, ["train", "--data", str(images), "--out", str(tmp_path / "run"), "--max-steps", "2"]
    )
    assert (
        result.exit_code == 2 and "checkpoint" in result.output and "cannot be read" in " ".join(result.output.split())
    )


def test_resume_refuses_other_data_and_a_new_run_never_replaces_a_checkpoint_unasked(tmp_path: Path) -> None:
    """The batches are drawn by index from the data: resuming on other data (or another --limit) would train
    another model in another order. --no-resume over a checkpoint replaces it only with --overwrite."""
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    args = ["train", "--out", str(tmp_path / "run"), "--threads", "1", "--batch-size", "2", "--crop", "16"]
    first = CliRunner().invoke(app, [*args, "--data", str(samples), "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert saved["format"] == "diffc-checkpoint"
    assert saved["config"]["data"]["url"] == str(samples) and saved["config"]["data"]["images"] == len(
        list(samples.glob("*.[jp][pn]g"))
    )
    spelled = CliRunner().invoke(app, [*args, "--data", f"{samples}/./", "--max-steps", "2"])
    assert spelled.exit_code == 0, spelled.output  # the same folder, spelled otherwise
    (tmp_path / "other").mkdir()
    for p in sorted(samples.glob("*.jpg"))[:3]:
        (tmp_path / "other" / p.name).write_bytes(p.read_bytes())
    for other in (["--data", str(samples), "--limit", "3"], ["--data", str(tmp_path / "other")]):
        refused = CliRunner().invoke(app, [*args, *other, "--max-steps", "3"])
        assert refused.exit_code == 2 and "cannot resume with a different data" in " ".join(
            refused.output.split()
        ), refused.output
    fresh = CliRunner().invoke(app, [*args, "--data", str(samples), "--max-steps", "1", "--no-resume"])
    assert fresh.exit_code == 2 and "--overwrite" in fresh.output, fresh.output
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 2  # kept
    again = [*args, "--data", str(samples), "--max-steps", "1", "--no-resume", "--overwrite"]
    replaced = CliRunner().invoke(app, again)
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 1


def test_a_checkpoint_without_a_data_record_still_resumes(tiny_set: list[bytes], tmp_path: Path) -> None:
    old = Trainer(CONFIG, tiny_set)
    old.train_step()
    old.save(tmp_path / "ckpt")  # data None: as written before the field
    record = {"url": "/x", "image_column": "image", "limit": 0, "images": 8, "photos": "", "photo_images": 0}
    resumed = Trainer(replace(CONFIG, data=record), tiny_set)
    resumed.load(tmp_path / "ckpt")
    assert resumed.state.step == 1


def test_training_on_images_none_of_which_decode_is_one_error(tmp_path: Path) -> None:
    """A fallback that recursed from each bad image to the next overflowed the stack on ~1,000 bad ones."""
    from diffc_pipeline.errors import InvalidInputError
    from diffc_pipeline.training.data import BatchSampler

    sampler = BatchSampler([b"not an image"] * 3000, batch_size=2, crop=8, seed=0)
    with pytest.raises(InvalidInputError, match="none of the 3000 training images decodes"):
        sampler.batch(0)
    good = _png(np.zeros((8, 8, 3), np.uint8))
    mostly_bad = BatchSampler([b"bad"] * 2000 + [good], batch_size=2, crop=8, seed=0)
    assert mostly_bad.batch(0).shape == (2, 3, 8, 8)


def test_init_from_and_export_name_a_folder_or_checkpoint_of_the_wrong_kind(tiny_set, tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    cdc = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "codecs" / "cdc" / "weights"
    args = ["train", "--data", str(samples), "--out", str(tmp_path / "run"), "--threads", "1", "--max-steps", "1"]
    result = CliRunner().invoke(app, [*args, "--init-from", str(cdc)])
    assert result.exit_code == 2 and "not a diffc U-Net model" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run" / "checkpoint").exists()
    trainer = Trainer(CONFIG, tiny_set)
    trainer.save(tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    (tmp_path / "ckpt" / "state.json").write_text(json.dumps({**state, "format": "cdc-checkpoint"}))
    result = CliRunner().invoke(app, ["model", "export", str(tmp_path / "ckpt"), str(tmp_path / "m")])
    assert result.exit_code == 2 and "is a cdc-checkpoint, not a DiffC training checkpoint" in " ".join(
        result.output.split()
    ), result.output


def test_a_model_folder_is_replaced_whole_and_never_one_holding_other_files(tmp_path: Path) -> None:
    """A kill while writing a model left new weights beside an old config.json and safetensors' temporary
    files in the folder; a folder of other files is refused, not replaced."""
    from diffc_pipeline.errors import ModelLoadError

    net = Trainer(CONFIG, []).ema
    model = tmp_path / "model"
    first = save_unet_model(model, net, LinearSchedule().to_dict(), name="t")
    (model / ".tmpKfqnrO").write_bytes(b"x" * 100)  # what a killed in-place write of older versions left
    second = save_unet_model(model, net, LinearSchedule().to_dict(), name="t", fp16=True)
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert second.sha256 != first.sha256 and json.loads((model / "config.json").read_text())["dtype"] == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old folder left
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"mine")
    with pytest.raises(ModelLoadError, match=r"holds other files than a model's \(a\.png\)"):
        save_unet_model(tmp_path / "photos", net, LinearSchedule().to_dict(), name="t")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["a.png"]


def test_a_model_is_written_into_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    """"." has no name to put a staging folder beside: the folder is taken by its absolute path."""
    monkeypatch.chdir(tmp_path)
    save_unet_model(Path("."), Trainer(CONFIG, []).ema, LinearSchedule().to_dict(), name="t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_a_checkpoint_state_is_written_whole(tiny_set: list[bytes], tmp_path: Path) -> None:
    """recover_checkpoint takes a .tmp holding state.json as complete: state.json appears by a rename."""
    trainer = Trainer(CONFIG, tiny_set)
    trainer.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
        "weights.safetensors",
    ]
