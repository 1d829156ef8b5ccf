"""The one definition of an image's codec seed, shared by compress, eval and the API.

Archives store each row's seed, so decoding never recomputes it; but compress and eval must derive the same
seed from the same (run seed, image id) for the same image to give the same stream in both.
"""

from __future__ import annotations

import hashlib


def image_seed(dataset_seed: int, image_id: str) -> int:
    """The codec seed of one image: a function of the dataset seed and the image id only.

    So an image gets the same seed whatever shard, batch or worker encodes it - and the same stream from
    every codec whose encoder is exact arithmetic (CDC's, the classical ones, DiffC with the analytic model);
    DiffC with a neural network may choose another candidate in a chunk or two when the batch size or thread
    count changes the network's last bits (docs/reliability.md, *Known limits*). 63 bits, so it fits Parquet's
    signed int64 for any reader.
    """
    digest = hashlib.blake2b(f"{dataset_seed}\x00{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)
