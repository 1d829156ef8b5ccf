"""The CDC codec behind the codec contract: real range-coded streams, progressive by channel slice.

Chunk 1 holds the hyper-latent ``z`` and the first slice of ``y``; chunk ``i`` (i > 1) holds slice ``i``. A
prefix of ``k`` chunks decodes: the missing slices take their predicted means (each from the hyperprior and
the slices before it), and the diffusion decoder synthesises what they would have carried.

Determinism: the analysis transform runs in float32 (only the encoder sees it). Everything both sides must
agree on - the hyper-decoder and the slice context networks - runs in float64, one image at a time, and its
outputs are snapped to coarse grids (means to multiples of 1/64 of a quantisation bin, scales to an index in
a shipped 64-entry table) before they touch the coder, so a last-bit difference of float arithmetic between
processes, batch sizes or thread counts would have to land within ~1e-14 of a grid boundary to matter. The
synthesis and the U-Net also run per image and on one thread (float32 convolutions sum in a thread-count
dependent order), and the diffusion noise comes from the seed in the header.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidInputError, ModelLoadError, ModelMismatchError, StreamError
from ..base import MAX_CHUNKS, Codec, DecodeOption, Encoded, check_seeds
from ..tensors import to_float, to_uint8
from .bitstream import SHAPE_BITS, Header, chunk_check
from .config import CdcOptions, ModelConfig
from .entropy import PMF_TOTAL, ChunkReader, ChunkWriter, gaussian_bits, scale_indices, scale_table, tabulate_prior
from .model import CdcModel, alpha_bar, count_parameters
from .refine import refine_latents
from .tiles import analysis, synthesise

STRIDE = 64
# Encoder effort is bounded: a stream option from a manifest elsewhere must not buy hours per image.
MAX_REFINE_STEPS = 2000
BUILTIN = Path(__file__).parent / "weights"
TRAIN_HINT = (
    "train one with `python -m diffc_pipeline.codecs.cdc.train --out RUN` and export it with "
    "`python -m diffc_pipeline.codecs.cdc.export RUN/checkpoint diffc_pipeline/codecs/cdc/weights`, "
    "or pass --model RUN/checkpoint"
)


# ---- models on disk -------------------------------------------------------------------------------------
class LoadedModel:
    """A CDC network (float32 for the transforms, float64 copy for the entropy parameters) and its tables."""

    def __init__(
        self,
        cfg: ModelConfig,
        state: dict[str, torch.Tensor],
        name: str,
        sha256: str,
        tables: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.cfg, self.name, self.sha256 = cfg, name, sha256
        self.net = CdcModel(cfg)
        try:
            self.net.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise ModelLoadError(f"CDC model {name!r}: weights do not match its config.json ({exc})") from None
        self.net.eval().requires_grad_(False)
        self.net64 = copy.deepcopy(self.net).double()
        if tables is None:
            tables = {
                "z_freq": tabulate_prior(self.net.z_prior, cfg.z_bound),
                "scales": scale_table(cfg.scale_min, cfg.scale_max, cfg.scale_levels),
            }
        self.z_freq = np.asarray(tables["z_freq"], dtype=np.int32)
        self.scales = np.asarray(tables["scales"], dtype=np.float64)
        if self.z_freq.shape != (cfg.hyper, 2 * cfg.z_bound + 1) or self.scales.shape != (cfg.scale_levels,):
            raise ModelLoadError(f"CDC model {name!r}: tables do not match its config")
        if (self.z_freq.sum(1) != PMF_TOTAL).any() or (self.z_freq < 1).any():
            raise ModelLoadError(f"CDC model {name!r}: z frequency table is not normalised to {PMF_TOTAL}")
        self.tables_sha256 = hashlib.sha256(self.z_freq.tobytes() + self.scales.tobytes()).hexdigest()


def network_model(net: CdcModel, name: str = "cdc-in-memory") -> LoadedModel:
    """A :class:`LoadedModel` from a network in memory (tests, evaluation during training); its id is the
    SHA-256 of the float32 weights in name order."""
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].numpy().tobytes())
    return LoadedModel(net.cfg, state, name, h.hexdigest())


# Release weights are stored in two files by role, each under the repository's 10 MB limit for a tracked file:
# what the encoder and the entropy model need, and the synthesis side only the decoder needs. A model
# directory written before the split holds one ``model.safetensors``; both layouts load the same.
ENCODER_MODULES = ("g_a", "h_a", "h_s", "z_prior")
WEIGHT_FILES = ("encoder.safetensors", "decoder.safetensors")
SINGLE_FILE = "model.safetensors"


def weight_file_of(tensor_name: str) -> str:
    """The release file that holds ``tensor_name`` (``encoder.safetensors`` or ``decoder.safetensors``)."""
    return WEIGHT_FILES[0] if tensor_name.split(".")[0] in ENCODER_MODULES else WEIGHT_FILES[1]


def weights_id(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights' canonical one-file safetensors serialisation (tensors in safetensors' own order):
    the same however the weights are split into files, and the digest a one-file export of them had, so a
    stream's model id (its first 4 bytes) stays valid across the change of layout."""
    from safetensors.torch import save

    return hashlib.sha256(save({k: v.contiguous() for k, v in weights.items()})).hexdigest()


def _read_weights(path: Path, files: Sequence[str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as load_bytes

    weights: dict[str, torch.Tensor] = {}
    for fname in files:
        part = load_bytes((path / fname).read_bytes())
        if weights.keys() & part.keys():
            raise ModelLoadError(f"{path}/{fname}: repeats tensors of another weight file")
        weights.update(part)
    return weights


def load_model(spec: str | None) -> LoadedModel:
    """``"builtin"`` (shipped weights), a model directory (``config.json``, ``encoder.safetensors`` +
    ``decoder.safetensors`` or one ``model.safetensors``, ``tables.safetensors``), a training checkpoint
    directory (``state.json`` + ``ema.safetensors``) or a run directory holding ``checkpoint/``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    if spec in (None, "builtin"):
        path = BUILTIN
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"no shipped CDC weights in {path} (release weights are not trained yet): {TRAIN_HINT}"
            )
        name = "cdc-builtin"
    else:
        path = Path(spec)
        name = str(path)
        if not path.is_dir():
            raise ModelLoadError(
                f"CDC model {spec!r}: not a directory, and CDC's only built-in model is 'builtin' (the default); "
                "give a directory of CDC weights or a training run (`diffc train-cdc --out RUN`)"
            )
    if not (path / "state.json").is_file() and (path / "checkpoint" / "state.json").is_file():
        path = path / "checkpoint"
    try:
        if (path / "state.json").is_file():  # a training checkpoint: EMA weights, tables computed here
            meta = json.loads((path / "state.json").read_text())
            if meta.get("format") != "cdc-checkpoint":
                raise ModelLoadError(f"{path}: state.json is not a CDC training checkpoint")
            cfg = ModelConfig.from_dict(meta["model"])
            blob = (path / "ema.safetensors").read_bytes()  # one read: the hash and the weights agree
            return LoadedModel(cfg, load_bytes(blob), name, hashlib.sha256(blob).hexdigest())
        files = WEIGHT_FILES if (path / WEIGHT_FILES[0]).is_file() else (SINGLE_FILE,)
        if not (path / "config.json").is_file() or not all((path / f).is_file() for f in files):
            found = sorted(p.name for p in path.iterdir())
            raise ModelLoadError(
                f"{path}: not a CDC model directory (needs config.json and {' + '.join(WEIGHT_FILES)} or "
                f"{SINGLE_FILE}; found {', '.join(found) or 'nothing'}; pickled checkpoints are refused)"
            )
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != "cdc-model":
            raise ModelLoadError(f"{path}/config.json: not a CDC model config (format {meta.get('format')!r})")
        cfg = ModelConfig.from_dict(meta["model"])
        weights = _read_weights(path, files)
        tables = None
        if (path / "tables.safetensors").is_file():
            from safetensors.numpy import load_file as load_np

            tables = load_np(str(path / "tables.safetensors"))
        return LoadedModel(cfg, weights, meta.get("name", name), weights_id(weights), tables)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ModelLoadError(f"CDC model {name!r}: cannot load ({type(exc).__name__}: {exc})") from None


# ---- the codec -------------------------------------------------------------------------------------------
class CdcCodec(Codec):
    name: ClassVar[str] = "cdc"
    progressive: ClassVar[bool] = True
    decode_options: ClassVar[tuple[DecodeOption, ...]] = (
        DecodeOption(
            "method",
            str,
            "diffusion",
            "diffusion (conditional DDIM, realistic texture) or mean (one-pass, best PSNR)",
            choices=("diffusion", "mean"),
        ),
        # The defaults are the realism setting: on 12 CBSD68 photos they keep the detail ratio at 1.00-1.06 of
        # the original's at every rate, ~2 dB below the mean decoder (4 steps, temperature 0.8 and a uniform
        # grid gave the mean decoder's blur at its PSNR); docs/cdc.md, *Measured figures*.
        DecodeOption(
            "steps",
            int,
            8,
            "DDIM steps of the diffusion decoder (= network evaluations)",
            minimum=1,
            maximum=MAX_CHUNKS,  # bounds the work an archive from elsewhere can ask of a decoder
        ),
        DecodeOption("temperature", float, 1.0, "scale of the diffusion decoder's start noise (gamma)", minimum=0.0),
        DecodeOption(
            "time_power",
            float,
            2.0,
            "DDIM time grid t_i = (1 - i/steps)^p: 1 uniform; 2 spends the steps near t = 0, where fine detail is "
            "decided (sharper, lower PSNR)",
            minimum=1.0,
        ),
    )

    def __init__(self, model: LoadedModel, options: CdcOptions | None = None, device: str = "cpu") -> None:
        options = options or CdcOptions()
        cfg = model.cfg
        if options.rate is None:
            options = replace(options, rate=cfg.default_rate)
        if not 0 <= options.rate < cfg.rates:
            raise InvalidInputError(
                f"cdc option rate={options.rate} out of range: this model has rates 0..{cfg.rates - 1}"
            )
        if not 0 <= options.slices <= cfg.slices:
            raise InvalidInputError(f"cdc option slices={options.slices} out of range 0..{cfg.slices} (0 = all)")
        if not 0 <= options.refine_steps <= MAX_REFINE_STEPS:
            raise InvalidInputError(
                f"cdc option refine_steps={options.refine_steps} out of range 0..{MAX_REFINE_STEPS} (0 = none)"
            )
        if device != "cpu":
            raise InvalidInputError(f"the CDC codec runs on cpu only (got device {device!r})")
        self.model, self.options, self.cfg = model, options, cfg
        self._written = options.slices or cfg.slices
        self.model_id = bytes.fromhex(model.sha256)[:4]
        stream_options = asdict(options)
        if not options.refine_steps:  # added later: left out at 0, so earlier archives keep their fingerprint
            del stream_options["refine_steps"]
        payload = json.dumps(
            {
                "options": stream_options,
                # default_rate picks an option (resolved above) and changes no bits: outside the fingerprint,
                # which stays that of the streams written before the field existed
                "model": {k: v for k, v in cfg.to_dict().items() if k != "default_rate"},
                "weights": model.sha256,
                "tables": model.tables_sha256,
                "stream": 1,
            },
            sort_keys=True,
        )
        self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()

    @classmethod
    def from_options(cls, options: CdcOptions, model: str | None, device: str = "cpu") -> CdcCodec:
        """What the registry calls: ``model`` is "builtin" (shipped weights) or a directory.

        ``device`` is ignored: CDC runs on the CPU everywhere, because encoder and decoder must compute the
        same entropy parameters (a model actor on a GPU node would otherwise write streams that a CPU decoder
        reads differently); the one-encoder-pass codec is fast enough there (0.3 s for 481x321).
        """
        return cls(load_model(model), options, "cpu")

    # ---- contract ---------------------------------------------------------------------------------------
    @property
    def num_chunks(self) -> int:
        return self._written

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "name": self.name,
            "options": asdict(self.options),
            "model": {"name": self.model.name, "sha256": self.model.sha256},
            "fingerprint": self.fingerprint,
            "num_chunks": self.num_chunks,
            "progressive": self.progressive,
            "details": {
                "lambdas": list(self.cfg.lambdas),
                "lambda": self.cfg.lambdas[self.options.rate],
                "slices": self.cfg.slices,
                "latent_channels": self.cfg.latent,
                "parameters": count_parameters(self.model.net),
                "stride": STRIDE,
                "header_bytes": Header(self.model_id, 0, 1, 1, 0, b"\0" * self.num_chunks).pack().__len__(),
                "tables_sha256": self.model.tables_sha256,
                "decode_defaults": {o.name: o.default for o in self.decode_options},
            },
        }

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return _padded(height), _padded(width)

    def stream_size(self, item: Encoded) -> tuple[int, int]:
        """The size in the stream's header (checked: length, magic, version, CRC); nothing else is read."""
        h = Header.unpack(item.header)
        return h.height, h.width

    def image_header_bits(self, item: Encoded) -> int:
        """The image's shape as the header codes it (two u16, 32 bits); the rest of the header (magic,
        version, model id, rate, chunk count, seed, checks, CRC) is what every image of an archive shares or
        derives (see :meth:`Codec.image_header_bits`)."""
        Header.unpack(item.header)
        return SHAPE_BITS

    def charged_bits(self, item: Encoded, k: int | None = None) -> int:
        """The shape and the chunks' bytes, plus where each chunk of the prefix but the last ends.

        A CDC chunk is a range-coder stream cut short (its decoder reads missing bytes as zeros,
        :mod:`.entropy`), so its length is information the decoder needs - moving one boundary decodes another
        image. An archive keeps the lengths in its Parquet columns; a stream standing alone must code them,
        so a rate charges them as a standalone stream would: Elias-gamma codes of ``length + 1``, rounded up
        to whole bytes. The last chunk ends where the prefix does, as DiffC's stream and a classical file do.
        """
        chunks = item.chunks if k is None else item.chunks[:k]
        gamma_bits = sum(2 * (len(c) + 1).bit_length() - 1 for c in chunks[:-1])
        return super().charged_bits(item, k) + 8 * -(-gamma_bits // 8)

    @torch.no_grad()
    def compress(self, images: np.ndarray, seeds: Sequence[int]) -> list[Encoded]:
        x = to_float(images)
        b, _, h, w = x.shape
        seeds = check_seeds(seeds, b)
        if h > 65535 or w > 65535:
            raise InvalidInputError(f"image of {h}x{w} pixels exceeds the CDC header's 65535 limit")
        xp = _pad(x)
        net = self.model.net
        if self.options.refine_steps:  # one image at a time: its refined latents do not depend on the batch
            rate, steps = self.options.rate, self.options.refine_steps
            latents = [refine_latents(net, xp[i : i + 1], h, w, rate, steps) for i in range(b)]
        else:
            y = analysis(net, xp)
            z = net.h_a(y)
            latents = [(y[i : i + 1], z[i : i + 1]) for i in range(b)]
        return [self._encode_one(y, z, h, w, seed) for (y, z), seed in zip(latents, seeds, strict=True)]

    def decompress(
        self, items: Sequence[Encoded], prefix: int | Sequence[int] | None = None, **options: Any
    ) -> np.ndarray:
        opts = self.parse_decode_options(options)
        items = list(items)
        if not items:
            raise InvalidInputError("no streams to decode")
        counts = self.check_prefix(items, prefix)
        headers = [self._header(it) for it in items]
        sizes = {(hd.height, hd.width) for hd in headers}
        if len(sizes) > 1:
            raise InvalidInputError(f"one image size per decode call, got {sorted(sizes)}")
        out = []
        with torch.no_grad(), one_thread():
            for it, hd, k in zip(items, headers, counts, strict=True):
                y_hat = self._decode_latent(hd, it.chunks[:k])
                out.append(self._reconstruct(y_hat, hd, opts))
        return np.concatenate(out, 0)

    # ---- internals --------------------------------------------------------------------------------------
    def _header(self, it: Encoded) -> Header:
        hd = Header.unpack(it.header)
        if hd.model_id != self.model_id:
            raise ModelMismatchError(
                f"stream made with CDC model id {hd.model_id.hex()}, but this codec's model "
                f"{self.model.name!r} has id {self.model_id.hex()}: decode with the model that encoded it"
            )
        if hd.rate >= self.cfg.rates:
            raise StreamError(f"CDC stream names rate {hd.rate}, the model has {self.cfg.rates}")
        if hd.chunks > self.cfg.slices or len(it.chunks) > hd.chunks:
            raise StreamError(f"CDC stream holds {len(it.chunks)} chunks, its header names {hd.chunks}")
        return hd

    def _z_probs(self, hz: int, wz: int) -> np.ndarray:
        return np.repeat(self.model.z_freq.astype(np.float64), hz * wz, axis=0)

    def _slice_params(self, i: int, hyper: torch.Tensor, prev: list[torch.Tensor], rate: int):
        """Grid-snapped scaled mean, scale-table index and gains of slice ``i`` (float64, one image)."""
        net64, cfg = self.model.net64, self.cfg
        s = net64.slice_ch
        mean, scale = net64.slice_params(i, hyper, prev)
        g = torch.exp(net64.log_gain[rate, i * s : (i + 1) * s])[None, :, None, None]
        grid = float(cfg.mean_grid)
        mean_s = torch.round(mean * g * grid) / grid
        idx = scale_indices((scale * g).clamp_min(cfg.scale_min), self.model.scales)
        return mean_s, idx, g

    def _encode_one(self, y: torch.Tensor, z: torch.Tensor, h: int, w: int, seed: int) -> Encoded:
        cfg, rate = self.cfg, self.options.rate
        zb, yb = cfg.z_bound, cfg.y_bound
        zs = torch.round(z).clamp(-zb, zb).to(torch.int64)  # (1, C, hz, wz)
        _, c, hz, wz = zs.shape
        sym = (zs[0] + zb).reshape(-1).numpy()
        writer = ChunkWriter(yb)
        writer.categorical(sym, self._z_probs(hz, wz))
        rows = np.repeat(np.arange(c), hz * wz)
        est = [float(-np.log2(self.model.z_freq[rows, sym] / PMF_TOTAL).sum())]
        hyper = self.model.net64.h_s(zs.double())
        y64 = y.double()
        prev: list[torch.Tensor] = []
        chunks: list[bytes] = []
        s = self.model.net64.slice_ch
        for i in range(self._written):
            mean_s, idx, g = self._slice_params(i, hyper, prev, rate)
            k = torch.round(y64[:, i * s : (i + 1) * s] * g - mean_s).clamp(-yb, yb)
            std = self.model.scales[idx.reshape(-1).numpy()]
            kn = k.reshape(-1).to(torch.int64).numpy()
            if i > 0:
                chunks.append(writer.finish())
                writer = ChunkWriter(yb)
                est.append(0.0)
            writer.gaussian(kn, std)
            est[-1] += gaussian_bits(kn, std)
            prev.append((k + mean_s) / g)
        chunks.append(writer.finish())
        header = Header(self.model_id, rate, h, w, seed, bytes(chunk_check(ch) for ch in chunks))
        return Encoded(header.pack(), chunks, est)

    def _decode_latent(self, hd: Header, chunks: Sequence[bytes]) -> torch.Tensor:
        cfg = self.cfg
        zb, yb = cfg.z_bound, cfg.y_bound
        for j, ch in enumerate(chunks):
            if not isinstance(ch, bytes | bytearray) or chunk_check(bytes(ch)) != hd.checks[j]:
                raise StreamError(
                    f"CDC chunk {j + 1} of {hd.chunks} fails its check byte (truncated or corrupted chunk)"
                )
        hp, wp = _padded(hd.height), _padded(hd.width)
        hz, wz = hp // 64, wp // 64
        if chunks:
            reader = ChunkReader(bytes(chunks[0]), yb)
            sym = reader.categorical(self._z_probs(hz, wz))
        else:  # nothing received: the prior's most likely z
            sym = np.repeat(self.model.z_freq.argmax(1), hz * wz)
        zs = torch.from_numpy(sym - zb).reshape(1, cfg.hyper, hz, wz).double()
        hyper = self.model.net64.h_s(zs)
        prev: list[torch.Tensor] = []
        for i in range(cfg.slices):
            mean_s, idx, g = self._slice_params(i, hyper, prev, hd.rate)
            if i < len(chunks):
                if i > 0:
                    reader = ChunkReader(bytes(chunks[i]), yb)
                std = self.model.scales[idx.reshape(-1).numpy()]
                k = torch.from_numpy(reader.gaussian(std)).reshape(mean_s.shape).double()
                prev.append((k + mean_s) / g)
            else:
                prev.append(mean_s / g)
        return torch.cat(prev, 1)

    def _reconstruct(self, y_hat: torch.Tensor, hd: Header, opts: dict) -> np.ndarray:
        net = self.model.net
        if opts["method"] == "mean":
            x = synthesise(y_hat.float(), lambda y, _where: net.synthesis(y)["mean"])
        else:
            gen = torch.Generator().manual_seed(hd.seed)
            shape = (1, 3, _padded(hd.height), _padded(hd.width))
            noise = torch.randn(shape, generator=gen) * opts["temperature"]

            def render(y: torch.Tensor, where: tuple[slice, slice]) -> torch.Tensor:
                start = noise[:, :, where[0], where[1]]
                return ddim(net, net.synthesis(y), hd.rate, start, opts["steps"], opts["time_power"])

            x = synthesise(y_hat.float(), render)
        return to_uint8(x[:, :, : hd.height, : hd.width])


def ddim(
    net: CdcModel, cond: dict, rate: int, noise: torch.Tensor, steps: int, time_power: float = 1.0
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) with the X-parameterised U-Net, from ``noise`` (the seed's Gaussian noise
    times the decode temperature, the shape of ``cond['mean']``).

    The output is the U-Net's ``x0`` at the last time of the grid, ``(1/steps)^time_power``: an MSE-trained
    ``x0`` is a posterior mean given ``x_t``, blurred below the noise level of that ``t``, so a grid that ends
    nearer 0 keeps finer detail for the same number of network evaluations."""
    x = noise.contiguous()
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64) ** time_power
    r = torch.tensor([rate])
    x0 = x
    for i in range(steps):
        t = ts[i : i + 1].float()
        a = alpha_bar(t)
        x0 = net.unet(x, t, r, cond)
        if i == steps - 1:
            break
        a_next = alpha_bar(ts[i + 1 : i + 2].float())
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x0


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the decoder's networks on one thread: oneDNN's float32 convolutions sum in an order that depends on
    the thread count (measured: 1e-7 differences that flip a few uint8 pixels of a 481x321 photo), so the
    decoder fixes it, and the pixels depend on the stream alone (on one CPU type)."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _padded(n: int) -> int:
    return int(math.ceil(n / STRIDE) * STRIDE)


def _pad(x: torch.Tensor) -> torch.Tensor:
    """Pad to the stride by edge replication (works for any size, also images smaller than the pad)."""
    _, _, h, w = x.shape
    ph, pw = _padded(h) - h, _padded(w) - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")
