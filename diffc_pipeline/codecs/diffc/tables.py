"""Build the shipped bucket tables of the index code (see :mod:`.index_code`).

The distribution of the chosen index (ordered random coding, see :mod:`.channel`) depends on the chunk's KL
only through the projection of the candidates on the target direction, so a 1-D simulation reproduces it
exactly. Chunk KLs are drawn around the budget (``ceil`` of the step KL over the budget gives chunks a little
under it, and a random partition spreads them), scaled by ``target_gain**2`` as the sender sees them.
The counts are stored as integers: both sides must build identical Huffman codes.

Run ``python -m diffc_pipeline.codecs.diffc.tables C L GAIN [C L GAIN ...]`` to add tables; they change the stream
format, so
``TABLES_VERSION`` (hashed into every stream) must be bumped when an existing table changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TABLES_VERSION = 1
OUT = Path(__file__).with_name("tables") / "index_buckets.json"


def simulate_indices(chunk_bits: int, candidate_log2: int, gain: float, trials: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 1 << candidate_log2
    kl_nats = chunk_bits * np.log(2.0) * np.clip(rng.lognormal(np.log(0.9), 0.3, trials), 0.05, 3.0)
    kl_nats = kl_nats * gain**2  # the sender scores against gain * d
    out = np.empty(trials, dtype=np.int64)
    block = max(1, (1 << 22) // n)
    for start in range(0, trials, block):
        k = min(block, trials - start)
        r = np.sqrt(2.0 * kl_nats[start : start + k])[:, None]
        u = rng.standard_normal((k, n))
        spacings = rng.exponential(size=(k, n)) / np.arange(n, 0, -1)
        log_t = np.log(np.cumsum(spacings, axis=1))  # sorted exponentials (ordered random coding), no sort
        out[start : start + k] = np.argmax(r * u - log_t, axis=1)
    return out


def table_key(chunk_bits: int, candidate_log2: int, gain: float) -> str:
    return f"{chunk_bits},{candidate_log2},{gain:.2f}"


def bucket_table(chunk_bits: int, candidate_log2: int, gain: float, trials: int = 20_000) -> list[int]:
    idx = simulate_indices(chunk_bits, candidate_log2, gain, trials)
    buckets = np.array([int(i).bit_length() for i in idx])
    counts = np.bincount(buckets, minlength=candidate_log2 + 1)
    return (counts + 1).astype(int).tolist()  # add-one: every bucket stays codable


def main(argv: list[str]) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {"version": TABLES_VERSION, "tables": {}}
    for c, log2n, gain in zip(argv[::3], argv[1::3], argv[2::3], strict=True):
        key = table_key(int(c), int(log2n), float(gain))
        data["tables"][key] = bucket_table(int(c), int(log2n), float(gain))
        print(f"table {key}: {data['tables'][key]}", flush=True)
        OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
