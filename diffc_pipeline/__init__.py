"""diffc-pipeline: dataset-scale lossy image compression with diffusion codecs (DiffC, CDC) and classical ones.

The public API (see docs/api.md) is importable from here; it is loaded on first use, so that
``import diffc_pipeline`` imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ArchiveReader",
    "__version__",
    "compress",
    "decode",
    "inspect",
    "open_archive",
    "read_archive",
]

if TYPE_CHECKING:
    from .api import ArchiveReader, compress, decode, inspect, open_archive, read_archive


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
