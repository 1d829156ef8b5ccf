"""Cut the listed inputs into shards with fixed names, before anything runs.

The plan is a pure function of the sorted input list, the shard size and the dataset seed, so a rerun
computes the same shards under the same names: that is what makes resuming (skip committed shards) safe.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from ..seeds import image_seed
from .sources import Source

SHARD_NAME_DIGITS = 6
IMAGE_FILES_PER_READ = 16  # image files per read task: small, so decoding streams into the encoders early
ROWS_PER_READ = 1024  # Parquet rows per read task, within one row group (the default shard is smaller)


def shard_name(index: int) -> str:
    return f"shard-{index:0{SHARD_NAME_DIGITS}d}"


def ids_digest(ids: list[str]) -> str:
    """Names a shard's contents: a committed shard with another digest was cut from other input."""
    h = hashlib.sha256()
    for image_id in ids:
        h.update(image_id.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    start: int  # first item (row of Plan.items)
    stop: int
    ids_sha256: str

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    source: Source
    shard_size: int
    seed: int
    items: pa.Table  # ITEM_SCHEMA + shard (int32) + seed (int64)
    shards: list[ShardPlan]

    def read_units(self, shards: list[ShardPlan]) -> list[pa.Table]:
        """Item slices for the read tasks: each within one shard and (for Parquet) one row group."""
        limit = ROWS_PER_READ if self.source.kind == "parquet" else IMAGE_FILES_PER_READ
        paths = self.items.column("path").to_pylist()
        groups = self.items.column("row_group").to_pylist()
        units = []
        for shard in shards:
            start = shard.start
            for i in range(shard.start + 1, shard.stop + 1):
                if i == shard.stop or i - start >= limit or paths[i] != paths[start] or groups[i] != groups[start]:
                    units.append(self.items.slice(start, i - start))
                    start = i
        return units


def make_plan(source: Source, shard_size: int, seed: int, first_index: int = 0) -> Plan:
    """``first_index``: the index of the first shard (an incremental run continues after committed ones)."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    items = source.items
    n = items.num_rows
    ids = items.column("id").to_pylist()
    shard_of = [first_index + i // shard_size for i in range(n)]
    items = items.append_column(pa.field("shard", pa.int32(), nullable=False), pa.array(shard_of, pa.int32()))
    items = items.append_column(
        pa.field("seed", pa.int64(), nullable=False), pa.array([image_seed(seed, i) for i in ids], pa.int64())
    )
    shards = [
        ShardPlan(
            first_index + k,
            shard_name(first_index + k),
            start,
            min(start + shard_size, n),
            ids_digest(ids[start : start + shard_size]),
        )
        for k, start in enumerate(range(0, n, shard_size))
    ]
    return Plan(source, shard_size, seed, items, shards)
