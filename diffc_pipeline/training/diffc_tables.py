"""Build DiffC's shipped coding tables (``codecs/diffc/tables/*.json``); a developer's tool, not run by users.

The index tables come from a 1-D simulation of ordered random coding (:mod:`..codecs.diffc.tables`); the
chunk-count tables are fitted on the chunk counts of real streams, which needs training images and the
built-in model - so the builder sits beside the trainer, and the codec never imports the data loaders.
Tables change the stream format: see :data:`~..codecs.diffc.tables.TABLES_VERSION`.

    python -m diffc_pipeline.training.diffc_tables index [--trials N] C L GAIN [C L GAIN ...]
    python -m diffc_pipeline.training.diffc_tables v2-counts ../shared/data/tinyimagenet/train 48
    python -m diffc_pipeline.training.diffc_tables v2 [--trials N] C L GAIN [C L GAIN ...]

``v2-counts`` runs before ``v2``: version 2's one-chunk index table mixes over the histogram it fits.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..codecs.diffc.tables import (
    ONE_CHUNK_BIN,
    OUT,
    OUT_V2,
    TABLES_VERSION,
    bucket_table,
    fit_count_weights,
    table_key,
    v2_bucket_tables,
)


def fit_counts_on_images(data: str, images: int) -> tuple[dict[str, list[int]], list[int]]:
    """Encode the first ``images`` images of ``data`` with the built-in model (default configuration, stream
    version 2): the count weights fitted on their chunk counts, and the histogram (bins of
    :data:`ONE_CHUNK_BIN` bits) of the KL of their one-chunk steps. Neither depends on the tables in use:
    chunk counts and KLs come from the chain, not from the code."""
    import torch

    from ..codecs.diffc.codec import DiffcCodec
    from ..images import decode_image
    from ..models import load_model
    from .data import load_encoded_images

    torch.set_num_threads(1)
    codec = DiffcCodec(load_model("builtin"))
    codec.step_log = []
    x = np.stack([decode_image(b) for b in load_encoded_images(data, limit=images)])
    sequences, one_chunk = [], []
    for start in range(0, len(x), 8):
        codec.compress(x[start : start + 8], list(range(start, min(start + 8, len(x)))))
        sequences += [[s["count"] for s in steps] for steps in codec.step_log or []]
        one_chunk += [s["kl_bits"] for steps in codec.step_log or [] for s in steps if s["count"] == 1]
    hist = np.bincount((np.asarray(one_chunk) / ONE_CHUNK_BIN).astype(int))
    return fit_count_weights(sequences, codec.code(2).drift_q), hist.tolist()


def _settings(values: list[str]) -> list[tuple[int, int, float]]:
    if not values or len(values) % 3:
        raise SystemExit("give channel settings as triples: CHUNK_BITS CANDIDATE_LOG2 GAIN [...]")
    return [(int(c), int(log2n), float(gain)) for c, log2n, gain in zip(*[iter(values)] * 3, strict=True)]


def _write(path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffc_pipeline.training.diffc_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name, default, what in (
        ("index", 20_000, "stream version 1's index tables"),
        ("v2", 200_000, "stream version 2's conditional index tables"),
    ):
        p = sub.add_parser(name, help=f"add {what} for channel settings")
        p.add_argument("--trials", type=int, default=default, help="simulated chunks per table (dense settings "
                       "of 2**22 candidates take ~0.25 s each: use fewer)")  # fmt: skip
        p.add_argument("settings", nargs="+", help="CHUNK_BITS CANDIDATE_LOG2 GAIN, repeated")
    p = sub.add_parser("v2-counts", help="fit version 2's chunk-count tables on images (built-in model)")
    p.add_argument("data", help="an image folder or Parquet dataset")
    p.add_argument("images", type=int, help="how many of its first images")
    args = parser.parse_args(argv)

    if args.command == "v2-counts":
        data = json.loads(OUT_V2.read_text())
        data["counts"], data["one_chunk_kl"] = fit_counts_on_images(args.data, args.images)
        print(data["counts"], data["one_chunk_kl"], flush=True)
        _write(OUT_V2, data)
    elif args.command == "v2":
        data = json.loads(OUT_V2.read_text())
        for c, log2n, gain in _settings(args.settings):
            data["index"][table_key(c, log2n, gain)] = v2_bucket_tables(c, log2n, gain, trials=args.trials)
            _write(OUT_V2, data)
    else:
        data = json.loads(OUT.read_text()) if OUT.exists() else {"version": TABLES_VERSION, "tables": {}}
        for c, log2n, gain in _settings(args.settings):
            key = table_key(c, log2n, gain)
            data["tables"][key] = bucket_table(c, log2n, gain, args.trials)
            print(f"table {key}: {data['tables'][key]}", flush=True)
            _write(OUT, data)


if __name__ == "__main__":
    main()
