"""Connect to Ray and size the model actor pool so that read and write tasks always keep a CPU.

Ray's ``num_cpus`` is a scheduling budget, not a thread cap: an actor that asks for every CPU starves the
read tasks and the dataset hangs (ray#44687). So the actors together ask for all CPUs but a reserve of at
least one kept for the light read/decode/write tasks. On CPUs the default is one torch thread per actor
and as many actors as CPUs: the codec's reverse-channel coding is single-threaded numpy (about 70% of encode time),
so processes scale where threads do not, and torch threads spinning on a core that another process
holds were measured here to slow a 2-core encode several-fold.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import ClusterError, DiffcError

READ_TASK_CPUS = 0.5


@dataclass(frozen=True)
class ActorSizing:
    actors: int
    num_cpus: float  # Ray resource request per actor
    num_gpus: float | None
    threads: int  # torch threads inside each actor

    def describe(self) -> str:
        device = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.threads} threads"
        return f"{self.actors} model actor(s), {device} each"


def size_actors(resources: dict[str, float], threads: int = 0, actors: int = 0, nodes: int = 1) -> ActorSizing:
    """One actor per GPU (``actors`` may ask for more, sharing them); without GPUs, actors of ``threads`` torch
    threads (default 1) filling the CPUs.

    Keep at least one whole CPU unclaimed: read/write tasks and Ray Data's own 1-CPU tasks (the block-size
    repartition) must always be schedulable, whatever the actors do. On one node fractional actors do
    that (two 0.5-CPU actors on a 2-core laptop use both cores for coding). Across ``nodes`` the free
    CPU must also be in one place: fractional actors would leave a fragment on every node and none whole
    (three 1-CPU nodes, three 0.67-CPU actors: the reads never start), so there actors take whole CPUs.
    """
    cpus = float(resources.get("CPU", 1))
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return ActorSizing(actors or gpus, 1.0, 1.0, threads or max(1, int(cpus) // gpus - 1))
    threads = threads or 1
    reserve = max(1.0, cpus / 8)
    if nodes > 1:
        actors = actors or max(1, int((cpus - reserve) // threads))
        return ActorSizing(actors, float(threads), None, threads)
    actors = actors or max(1, round(cpus / threads))
    return ActorSizing(actors, max(0.0, cpus - reserve) / actors, None, threads)


def cluster_sizing(threads: int = 0, actors: int = 0) -> ActorSizing:
    """:func:`size_actors` for the connected cluster: its resources and how many alive nodes offer CPUs."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    return size_actors(ray.cluster_resources(), threads, actors, nodes=nodes or 1)


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Connect for the block (:func:`connect`); an embedded cluster this started is shut down afterwards, a
    cluster this process did not start is left running."""
    import ray

    started = connect(address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def connect(address: str | None) -> bool:
    """Connect to ``address``'s cluster, the running one, or an embedded local one sized to this machine;
    returns whether this call started the connection. Ray Data's own progress bars and per-dataset logs are
    turned off (our progress reports instead)."""
    import ray
    from ray.data import DataContext

    started = False
    address = probe_cluster(address)
    if not ray.is_initialized():
        quiet = dict(log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
        if address:
            ray.init(address=address, **quiet)
        else:
            start_local_ray(os.cpu_count() or 1, **quiet)
        started = True
    _quiet_ray_data()
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own rich bar reports progress
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # Ray Data fails a dataset after 30 min without a block moving; one codec call may legitimately take
    # longer (a 12 MP photo through DiffC is ~40 min on 2 cores: measured, it failed a compress at 30 min).
    # Crashed or lost actors are Ray's own failure detection's business; a slow call is not a hang.
    ctx.execution_no_progress_timeout_s = -1
    return started


CONNECT_TIMEOUT_S = 10.0


def probe_cluster(address: str | None) -> str | None:
    """The cluster address a job will use (``address``, else ``$RAY_ADDRESS``; ``None``: an embedded cluster),
    checked reachable. Jobs call it before they write anything, so a dead address leaves no trace behind.

    Inside a Ray job the driver is told its cluster through RAY_ADDRESS (passing num_cpus there is refused).
    An explicit address is probed even when this process is already connected: a dead one is an error, not
    silently ignored.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
    return address


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with a clear error when nothing listens at a cluster address (``host:port`` or
    ``ray://host:port``): ``ray.init`` would otherwise wait on the missing GCS for many minutes. ``auto``
    (Ray's own lookup of a cluster on this machine) is left to Ray."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise DiffcError(f"cluster address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is it running? `ray status` on "
            "its head node shows its address)"
        ) from None


# Ray gives a new raylet a fixed 30 s (not configurable) to register with its GCS; on a loaded 2-core machine
# that runs out now and then, and the next attempt usually gets through.
LOCAL_START_ATTEMPTS = 3


def start_local_ray(num_cpus: int, attempts: int = LOCAL_START_ATTEMPTS, **init_kwargs) -> None:
    """Start an embedded Ray cluster of ``num_cpus``, retrying Ray's start-up timeout; a clear error if it
    never comes up.

    ``address="local"``: always a new embedded cluster; without it Ray would join a cluster that another
    process started on this machine (and refuse ``num_cpus``), which ``--address`` is for.
    """
    import ray

    # Ray's default for a new local cluster is token authentication, announced with a WARNING that newcomers
    # read as a failure; the cluster keeps the authentication, the notice stays in Ray's logs. (Setting
    # RAY_AUTH_MODE=token here instead would not do: Ray caches the mode at import, and the driver would then
    # talk to its own cluster without the token. core_worker's "constructor arguments in the object store"
    # line is a known false alarm of Ray Data itself, ray#57733; it stays.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DropTokenNotice())
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **init_kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            ray.shutdown()
            if "timed out during startup" not in str(exc):
                raise
            logging.getLogger(__name__).warning("Ray start-up timed out (attempt %d of %d)", attempt, attempts)
    raise ClusterError(
        f"the embedded Ray cluster did not start in {attempts} attempts: its raylet did not register within "
        "Ray's 30 s start-up limit each time (is the machine overloaded?). Try again when it is less busy, or "
        "start a cluster with `ray start --head` and pass its address with --address."
    )


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


class _DropProgressNotice(logging.Filter):
    """Ray Data warns once that its bars are off - on purpose here, so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def _quiet_ray_data() -> None:
    """Keep Ray Data's INFO lines (per-dataset timings) in its log file, off the user's terminal."""
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console" or type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.WARNING)
            handler.addFilter(_DropProgressNotice())


def model_stage(dataset, actor_class, batch_size: int, sizing: ActorSizing, **constructor_kwargs):
    """``map_batches`` over a pool of model actors (each loads the model once), one block per batch.

    Without the repartition Ray Data merges a read task's output into one block (up to 128 MiB), hands it to a
    single actor and emits its results only at the end: no parallelism, no progress.
    """
    import ray.data

    dataset = dataset.repartition(target_num_rows_per_block=batch_size)
    return dataset.map_batches(
        actor_class,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=sizing.actors),
        num_cpus=sizing.num_cpus,
        num_gpus=sizing.num_gpus,
        fn_constructor_kwargs=dict(
            threads=sizing.threads, device="cuda" if sizing.num_gpus else "cpu", **constructor_kwargs
        ),
    )
