"""Model loading: the built-in weights, model directories, refusal of pickles, and the diffusers adapter."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from diffc_pipeline.errors import ModelLoadError
from diffc_pipeline.models import (
    BUILTIN_DIR,
    SHIPPED_MODELS,
    DiffusionModel,
    LinearSchedule,
    load_builtin,
    load_model,
    predict_x,
    save_unet_model,
)
from diffc_pipeline.models.unet import UNet, UNetConfig

TINY = UNetConfig(widths=(16, 16), blocks_per_level=1, emb_dim=32, groups=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(seed: int = 0) -> UNet:
    """A tiny U-Net whose zero-initialised output layer is randomised, so its predictions are not all zero."""
    torch.manual_seed(seed)
    net = UNet(TINY)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    return net.eval()


def inputs(size: int = 8, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=gen), torch.tensor([-3.0, 7.5])[:batch]


# ---- built-in and model directories -------------------------------------------------------------------


def test_builtin_model_loads() -> None:
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        pytest.skip("built-in weights not shipped yet")
    model = load_model("builtin")
    assert isinstance(model, DiffusionModel)
    z, logsnr = inputs(size=model.pad_multiple * 2)
    eps = model.predict_eps(z, logsnr)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    assert len(model.identity.sha256) == 64


# The shipped models' identities, pinned: their figures in docs/benchmarks.md were measured with these weights.
BUILTIN_ID = "9b4c1c627e7b7a30"  # release 8
PHOTO_ID = "0cfec7a08782b820"


def test_photo_model_is_a_second_shipped_model_of_the_same_network() -> None:
    """``--model photo`` loads its own release (another identity: its streams are not the built-in model's)
    with the built-in model's architecture, schedule and file layout."""
    builtin, photo = load_model("builtin"), load_model("photo")
    assert photo.identity.name == "diffc-unet-photos" and photo.identity.sha256.startswith(PHOTO_ID)
    assert builtin.identity.name == "diffc-unet-tin64" and builtin.identity.sha256.startswith(BUILTIN_ID)
    assert photo.identity.sha256 != builtin.identity.sha256
    configs = [json.loads((SHIPPED_MODELS[m] / "config.json").read_text()) for m in ("builtin", "photo")]
    assert configs[0]["unet"] == configs[1]["unet"] and configs[0]["schedule"] == configs[1]["schedule"]
    assert configs[1]["init_from"]["name"] == "diffc-unet-tin64"  # trained from release 7
    assert configs[0]["init_from"]["sha256"] == photo.identity.sha256  # release 8 continues the photo model
    for directory in SHIPPED_MODELS.values():  # release weights: fp16, under the 10 MB rule
        assert (directory / "model.safetensors").stat().st_size < 10_000_000


def test_builtin_missing_weights_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not shipped yet.*diffc model export"):
        load_builtin(tmp_path)


def test_path_model_round_trip(tmp_path: Path) -> None:
    net = tiny_net()
    identity = save_unet_model(tmp_path / "m", net, LinearSchedule().to_dict(), name="tiny")
    model = load_model(str(tmp_path / "m"))
    assert isinstance(model, DiffusionModel)
    assert model.identity == identity and model.identity.name == "tiny"
    assert model.pad_multiple == TINY.pad_multiple == 4
    z, logsnr = inputs()
    with torch.no_grad():
        expected = net(z, logsnr)
    assert expected.abs().mean() > 0
    assert torch.equal(model.predict_eps(z, logsnr), expected)
    # naming the weight file itself loads the same model
    same = load_model(str(tmp_path / "m" / "model.safetensors"))
    assert same.identity == identity


def test_identity_is_the_content_not_the_path(tmp_path: Path) -> None:
    net = tiny_net()
    a = save_unet_model(tmp_path / "a", net, LinearSchedule().to_dict(), name="tiny")
    b = save_unet_model(tmp_path / "b", net, LinearSchedule().to_dict(), name="tiny")
    assert a == b
    with torch.no_grad():
        net.out.bias.add_(1e-3)
    c = save_unet_model(tmp_path / "c", net, LinearSchedule().to_dict(), name="tiny")
    assert c.sha256 != a.sha256
    d = save_unet_model(tmp_path / "d", tiny_net(), LinearSchedule(-10.0, 5.0).to_dict(), name="tiny")
    assert d.sha256 != a.sha256  # the schedule shapes the outputs, so it is part of the identity


def test_fp16_model_is_smaller_and_close(tmp_path: Path) -> None:
    net = tiny_net()
    save_unet_model(tmp_path / "f32", net, LinearSchedule().to_dict(), name="tiny")
    save_unet_model(tmp_path / "f16", net, LinearSchedule().to_dict(), name="tiny", fp16=True)
    size = {k: (tmp_path / k / "model.safetensors").stat().st_size for k in ("f32", "f16")}
    assert size["f16"] < 0.6 * size["f32"]
    z, logsnr = inputs()
    a = load_model(str(tmp_path / "f32")).predict_eps(z, logsnr)
    b = load_model(str(tmp_path / "f16")).predict_eps(z, logsnr)
    assert torch.allclose(a, b, atol=2e-3)


def test_unknown_model_specs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'builtin', 'photo', 'gaussian' or a PATH"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(str(tmp_path / "junk"))
    net = tiny_net()
    save_unet_model(tmp_path / "bad", net, LinearSchedule().to_dict(), name="tiny")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["unet"]["widths"] = [16, 32]
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not match the config"):
        load_model(str(tmp_path / "bad"))
    # weights that upcast without a word, a schedule running the wrong way, none at all
    from safetensors.torch import save_file

    save_unet_model(tmp_path / "int8", net, LinearSchedule().to_dict(), name="tiny")
    save_file({k: v.to(torch.int8) for k, v in net.state_dict().items()}, str(tmp_path / "int8" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"weights must be floating point, .* is torch\.int8"):
        load_model(str(tmp_path / "int8"))
    backwards = {"kind": "linear", "gamma_min": 5.0, "gamma_max": -13.3}
    for schedule, why in ((backwards, "must be below"), (None, "no noise")):
        save_unet_model(tmp_path / "sched", net, LinearSchedule().to_dict(), name="tiny")
        config = json.loads((tmp_path / "sched" / "config.json").read_text())
        (tmp_path / "sched" / "config.json").write_text(json.dumps({**config, "schedule": schedule}))
        with pytest.raises(ModelLoadError, match=why):
            load_model(str(tmp_path / "sched"))


def test_gaussian_model() -> None:
    if importlib.util.find_spec("diffc_pipeline.models.gaussian") is None:
        with pytest.raises(ModelLoadError, match="gaussian"):
            load_model("gaussian")
        return
    model = load_model("gaussian")
    assert isinstance(model, DiffusionModel)
    z, logsnr = inputs(size=max(8, model.pad_multiple))
    assert model.predict_eps(z, logsnr).shape == z.shape


# ---- pickles ------------------------------------------------------------------------------------------


def _pickled_model_dir(directory: Path, net: UNet) -> Path:
    """A diffc model directory whose weights are a real ``torch.save`` pickle instead of safetensors."""
    save_unet_model(directory, net, LinearSchedule().to_dict(), name="tiny")
    (directory / "model.safetensors").unlink()
    torch.save(net.state_dict(), directory / "model.pt")
    return directory


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    directory = _pickled_model_dir(tmp_path / "m", tiny_net())
    for spec in (directory, directory / "model.pt"):
        with pytest.raises(ModelLoadError, match=r"model\.pt: refusing to load a pickled checkpoint"):
            load_model(str(spec))


def test_pickled_weights_load_when_allowed(tmp_path: Path) -> None:
    net = tiny_net()
    directory = _pickled_model_dir(tmp_path / "m", net)
    model = load_model(str(directory), allow_pickle=True)
    z, logsnr = inputs()
    with torch.no_grad():
        assert torch.equal(model.predict_eps(z, logsnr), net(z, logsnr))


class _Exploit:
    """Unpickling this would create a directory: the stand-in for code a hostile checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_that_run_code_are_refused_even_when_allowed(tmp_path: Path) -> None:
    directory = _pickled_model_dir(tmp_path / "m", tiny_net())
    marker = tmp_path / "exploited"
    torch.save({"weight": _Exploit(marker)}, directory / "model.pt")
    with pytest.raises(ModelLoadError, match="not a plain tensor checkpoint"):
        load_model(str(directory), allow_pickle=True)
    assert not marker.exists()


# ---- diffusers adapter --------------------------------------------------------------------------------


def _tiny_diffusers_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()


def _save_pipeline(
    directory: Path, unet, prediction_type: str = "epsilon", safe: bool = True, **sched
) -> Path:
    """A diffusers pipeline folder: ``unet/`` (weights + config) and ``scheduler/scheduler_config.json``."""
    from diffusers import DDPMScheduler

    unet.save_pretrained(directory / "unet", safe_serialization=safe)
    DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, **sched).save_pretrained(
        directory / "scheduler"
    )
    return directory


@pytest.fixture(scope="module")
def diffusers_unet():
    pytest.importorskip("diffusers")
    return _tiny_diffusers_unet()


def _logsnr_of_step(directory: Path, n: list[int]) -> torch.Tensor:
    """log-SNR of discrete timesteps, computed from the scheduler diffusers itself builds."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler.from_pretrained(directory / "scheduler").alphas_cumprod.double()[n]
    return ac.log() - torch.log1p(-ac)


def test_diffusers_predict_eps_matches_the_unet_at_discrete_steps(tmp_path: Path, diffusers_unet) -> None:
    directory = _save_pipeline(tmp_path / "pipe", diffusers_unet)
    model = load_model(str(directory))
    assert isinstance(model, DiffusionModel)
    assert model.channels == 3 and model.pad_multiple == 2
    steps = [0, 10, 500, 999]
    z = torch.randn(len(steps), 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = model.predict_eps(z, _logsnr_of_step(directory, steps))
    with torch.no_grad():
        expected = diffusers_unet(z, torch.tensor(steps)).sample
    assert torch.allclose(eps, expected, atol=1e-5)
    # between two discrete steps the U-Net sees the fractional timestep, not a rounded one
    mid = 0.5 * (_logsnr_of_step(directory, [500]) + _logsnr_of_step(directory, [501]))
    between = model.predict_eps(z[:1], mid)
    with torch.no_grad():
        lo, hi = (
            diffusers_unet(z[:1], torch.tensor([500])).sample,
            diffusers_unet(z[:1], torch.tensor([501])).sample,
        )
    assert not torch.equal(between, lo) and not torch.equal(between, hi)


def test_diffusers_v_and_sample_predictions_become_noise(tmp_path: Path, diffusers_unet) -> None:
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = diffusers_unet(z, torch.tensor([300, 300])).sample
    for kind in ("v_prediction", "sample"):
        directory = _save_pipeline(tmp_path / kind, diffusers_unet, prediction_type=kind)
        logsnr = _logsnr_of_step(directory, [300, 300]).float()
        a, s = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1), torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1)
        expected = a * out + s * z if kind == "v_prediction" else (z - a * out) / s
        assert torch.allclose(load_model(str(directory)).predict_eps(z, logsnr), expected, atol=1e-4)


def test_diffusers_schedule_spans_the_trained_noise_levels(tmp_path: Path, diffusers_unet) -> None:
    directory = _save_pipeline(tmp_path / "pipe", diffusers_unet)
    schedule = load_model(str(directory)).schedule
    ends = -_logsnr_of_step(directory, [0, 999])
    assert math.isclose(schedule.gamma_min, float(ends[0])) and math.isclose(
        schedule.gamma_max, float(ends[1])
    )
    t = torch.linspace(0, 1, 257, dtype=torch.float64)
    gamma = schedule.gamma(t)
    assert (gamma[1:] > gamma[:-1]).all()
    assert torch.allclose(schedule.t_of_gamma(gamma), t, atol=1e-9)
    assert schedule.to_dict()["num_timesteps"] == 1000
    # the model predicts at every noise level of the schedule (its ends included)
    model = load_model(str(directory))
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_hat = predict_x(model, z, -schedule.gamma(torch.tensor([0.0, 0.5, 1.0])).float())
    assert torch.isfinite(x_hat).all()


def test_diffusers_identity_is_stable_and_content_based(tmp_path: Path, diffusers_unet) -> None:
    directory = _save_pipeline(tmp_path / "pipe", diffusers_unet)
    first, second = load_model(str(directory)).identity, load_model(str(directory)).identity
    assert first == second and first.name == "diffusers:pipe"
    other_schedule = _save_pipeline(tmp_path / "pipe2", diffusers_unet, beta_end=0.03)
    other_weights = _save_pipeline(tmp_path / "pipe3", _tiny_diffusers_unet(seed=1))
    assert load_model(str(other_schedule)).identity.sha256 != first.sha256
    assert load_model(str(other_weights)).identity.sha256 != first.sha256


def test_diffusers_flat_folder_loads(tmp_path: Path, diffusers_unet) -> None:
    from diffusers import DDPMScheduler

    diffusers_unet.save_pretrained(tmp_path / "flat", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000).save_config(tmp_path / "flat")
    model = load_model(str(tmp_path / "flat"))
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = diffusers_unet(z, torch.tensor([999])).sample
    assert torch.allclose(
        model.predict_eps(z, -torch.tensor([model.schedule.gamma_max])), expected, atol=1e-5
    )


def test_diffusers_pickled_weights_need_permission(tmp_path: Path, diffusers_unet) -> None:
    directory = _save_pipeline(tmp_path / "pipe", diffusers_unet, safe=False)
    assert (directory / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ModelLoadError, match="refusing to load a pickled checkpoint"):
        load_model(str(directory))
    model = load_model(str(directory), allow_pickle=True)
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = diffusers_unet(z, torch.tensor([999])).sample
    assert torch.allclose(
        model.predict_eps(z, -torch.tensor([model.schedule.gamma_max])), expected, atol=1e-5
    )
