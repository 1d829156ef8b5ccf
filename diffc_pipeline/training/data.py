"""Training images through fsspec: a Parquet dataset with an image-bytes column, or a folder of image files.

The encoded bytes of the whole set are held in memory (Tiny ImageNet train: ~160 MB of JPEG) and decoded per
batch, so any batch can be drawn by index: that is what makes resuming exact (batch ``s`` depends only on the
seed and ``s``). Decoded pixels are never materialised for the whole set.
"""

from __future__ import annotations

import numpy as np
import torch

from ..codecs.tensors import to_float
from ..errors import DiffcError, InvalidImageError, InvalidInputError
from ..images import decode_image
from ..pipeline.sources import list_source, read_bytes


def load_encoded_images(url: str, image_column: str = "image", limit: int | None = None, **storage) -> list[bytes]:
    """All encoded images under ``url`` (Parquet files or image files, searched recursively), in the order
    ``diffc compress`` lists them (sorted by path, then row)."""
    source = list_source(url, storage, image_column=image_column, limit=limit or 0)
    out = []
    ids = source.items.column("id").to_pylist()
    for item, data in zip(ids, read_bytes(source.items, storage, image_column), strict=True):
        if isinstance(data, Exception):
            raise DiffcError(f"cannot read training image {item!r} of {url}: {data}")
        out.append(data)
    return out


class BatchSampler:
    """Batch ``s`` of a seeded epoch-permutation stream, random crops and flips; a pure function of ``s``.

    ``stream`` tells independent streams of one run apart (0: the main one, whose draws are those of runs
    before there were several). ``keep_decoded`` holds decoded pixels after first use: for a few hundred
    large photos (~0.7 GB for the 581 of ``photos/``), where decoding a 1-2 MP JPEG for every crop would cost
    more than the training step.
    """

    def __init__(
        self, images: list[bytes], batch_size: int, crop: int, seed: int, stream: int = 0, keep_decoded: bool = False
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.crop = crop
        self.seed = seed
        self._key = [stream] if stream else []
        self._decoded: dict[int, np.ndarray] | None = {} if keep_decoded else None
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            rng = np.random.default_rng([self.seed, epoch, *self._key])
            self._perm_cache = {epoch: rng.permutation(len(self.images))}
        return self._perm_cache[epoch]

    def batch(self, step: int) -> torch.Tensor:
        """``(B, 3, crop, crop)`` float tensor in ``[-1, 1]``."""
        n = len(self.images)
        rng = np.random.default_rng([self.seed, 1_000_003, step, *self._key])
        out = np.empty((self.batch_size, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(self.batch_size):
            pos = step * self.batch_size + i
            idx = int(self._perm(pos // n)[pos % n])
            out[i] = self._crop(self._decode(idx, rng), rng)
        return to_float(out)

    def _decode(self, idx: int, rng: np.random.Generator) -> np.ndarray:
        if self._decoded is not None and idx in self._decoded:
            return self._decoded[idx]
        # a bad training image is replaced by the next valid one, deterministically (a loop, not recursion: a
        # run of ~1,000 bad images overflowed the stack)
        for k in range(len(self.images)):
            at = (idx + k) % len(self.images)
            try:
                img = decode_image(self.images[at])
            except InvalidImageError:
                continue
            if self._decoded is not None:
                self._decoded[at] = img
            return img
        raise InvalidInputError(f"none of the {len(self.images)} training images decodes (not images, or corrupt)")

    def _crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w, _ = img.shape
        if h < self.crop or w < self.crop:
            img = np.pad(img, ((0, max(0, self.crop - h)), (0, max(0, self.crop - w)), (0, 0)), mode="reflect")
            h, w, _ = img.shape
        top = int(rng.integers(0, h - self.crop + 1))
        left = int(rng.integers(0, w - self.crop + 1))
        img = img[top : top + self.crop, left : left + self.crop]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return img
