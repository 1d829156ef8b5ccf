"""DiffC evaluation on Ray actors: each actor holds the codec once, batches of images are spread over them.

The in-process loop (``runner.run_diffc``) is the unit of work: an actor runs it on one batch and sends
back the records, plus the reconstructions of the showcase image when the batch holds it. On a 2-core
machine two 1-thread actors beat one 2-thread process, because the channel coder is single-threaded numpy;
on a cluster the same code spreads over every node. What travels to the actors is the registry's
:class:`~diffc_pipeline.codecs.CodecSpec` as a dict, the same thing that builds the codec here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..codecs import CodecSpec
from .data import EvalImage
from .perceptual import PerceptualMetrics, PerceptualSpec
from .runner import Progress, Showcase, batches_by_size, run_diffc, sweep_codecs


class DiffcWorker:
    """Ray actor: the codec of every channel, built once from the spec."""

    def __init__(self, spec: dict, channels: Sequence[str], threads: int, perceptual: PerceptualSpec) -> None:
        import torch

        torch.set_num_threads(threads)
        self.codec = CodecSpec(**spec).build()
        self.codecs = sweep_codecs(self.codec, channels)
        self.perceptual = PerceptualMetrics(perceptual) if perceptual else None

    def fingerprint(self) -> str:
        return self.codec.fingerprint

    def run(
        self,
        batch: list[EvalImage],
        prefixes: Sequence[int],
        methods: Sequence[str],
        seed: int,
        showcase_id: str,
    ) -> tuple[list[dict], list[tuple[dict, np.ndarray]]]:
        showcase = next((Showcase(im) for im in batch if im.id == showcase_id), None)
        records = run_diffc(
            batch, self.codecs, prefixes, methods, seed, len(batch), showcase, lambda _: None, self.perceptual
        )
        recon = [pair for pairs in showcase.recon.values() for pair in pairs] if showcase else []
        return records, recon


def run_diffc_on_ray(
    images: Sequence[EvalImage],
    spec: CodecSpec,
    fingerprint: str,
    channels: Sequence[str],
    prefixes: Sequence[int],
    methods: Sequence[str],
    seed: int,
    batch_size: int,
    showcase: Showcase,
    advance: Progress,
    workers: int,
    threads: int,
    address: str | None,
    perceptual: PerceptualSpec,
) -> list[dict]:
    """``run_diffc`` over Ray actors; records come back in batch order, as the in-process loop makes them.

    ``fingerprint`` is the codec's here: an actor whose model loads differently is refused."""
    import ray
    from ray.util import ActorPool

    from ..errors import ModelMismatchError
    from ..pipeline.runtime import cluster_sizing, ray_session

    with ray_session(address):
        sizing = cluster_sizing(threads, workers)
        actor = ray.remote(num_cpus=sizing.num_cpus, num_gpus=sizing.num_gpus)(DiffcWorker)
        args = (spec.to_dict(), list(channels), sizing.threads, perceptual)
        actors = [actor.remote(*args) for _ in range(sizing.actors)]
        if set(ray.get([a.fingerprint.remote() for a in actors])) != {fingerprint}:
            raise ModelMismatchError(f"codec {spec.to_dict()} loads differently on the Ray workers than here")
        records: list[dict] = []
        pool = ActorPool(actors)
        batches = batches_by_size(images, batch_size)
        work = pool.map(lambda a, b: a.run.remote(b, list(prefixes), list(methods), seed, showcase.image.id), batches)
        for batch, (recs, recon) in zip(batches, work, strict=True):
            records += recs
            for rec, pixels in recon:
                showcase.add(rec, pixels)
            advance(len(batch) * len(channels))
        return records
