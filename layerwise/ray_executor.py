"""The Ray executor: one Ray task per layer job, on an existing cluster or a local instance.

Imported only when asked for (``executor="ray"`` or ``RayExecutor(...)``), so ray stays an
optional dependency (``pip install layertrim[ray]``).

- ``address=None`` starts a local Ray instance (and shuts it down on ``close``); ``"auto"``
  or ``"host:port"`` joins a running cluster (``ray start --head`` on one machine,
  ``ray start --address host:port`` on the others). A driver that already called
  ``ray.init`` is used as it is.
- Each job's problem (its Gram matrix is most of it) goes into the object store through one
  ``ray.put``; a retried task reads the same object.
- Each task asks for CPUs sized from the layer's d and m (see ``task_resources``), never more
  than the largest node has, and caps its BLAS threads to what it asked for.
- A task whose worker dies is retried ``retries`` times (Ray's ``max_retries``); a task that
  raises is not retried: the solver's exception comes back for that job alone.
- Results stream back as they finish (``ray.wait``), so progress moves.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.layerwise.executors import (
    DEFAULT_RETRIES,
    Executor,
    LayerJob,
    WorkerDiedError,
)
from layertrim.validate import check_int

CONNECT_TIMEOUT_S = 5.0
# flops of one m x d x d product above which a job asks for 2 / 4 CPUs (BLAS threads)
TWO_CPU_FLOPS = 2e9
FOUR_CPU_FLOPS = 2e10


def task_resources(job: LayerJob, max_cpus: float) -> dict:
    """The Ray resources of one job: CPUs from its m x d x d product (one CPU for small layers,
    where threads cost more than they save), memory from its arrays (the Gram and a factor of
    it, the weights and a few solver copies of them), GPUs none (the solvers run on CPU)."""
    p = job.problem
    d = p.H.shape[0]
    flops = p.m * d * d
    cpus = 1 if flops < TWO_CPU_FLOPS else 2 if flops < FOUR_CPU_FLOPS else 4
    memory = 8 * (3 * d * d + 6 * p.m * d) + (64 << 20)
    return {"num_cpus": max(1, min(cpus, int(max_cpus))), "num_gpus": 0, "memory": memory}


def _ray_solve(fn: Callable, job: LayerJob, threads: int):
    """Runs inside a Ray worker."""
    from threadpoolctl import threadpool_limits

    p = job.problem
    for name in ("W0", "bias", "H", "X"):  # zero-copy object-store arrays are read-only
        a = getattr(p, name)
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            setattr(p, name, a.copy())
    with threadpool_limits(limits=threads):
        return fn(job)


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError(f"a Ray address is 'auto' or host:port, got {address!r}")
    return host, port


def _reachable(address: str) -> None:
    """Fail fast on a host:port nothing listens on (ray.init would retry for a minute)."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InvalidInputError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}): start one with "
            f"`ray start --head --port {port}`, or check the address") from None


class RayExecutor(Executor):
    """Layer jobs as Ray tasks.

    Parameters
    ----------
    address : None (start a local Ray instance), "auto" (the cluster this machine belongs to)
        or "host:port" of a running head node.
    workers : at most this many jobs in flight (None: as many as the cluster's resources
        admit); when a local instance is started, also its CPU count.
    retries : retries of a job whose worker dies (Ray's ``max_retries``).
    resources : a callable ``job -> dict`` of Ray resources, replacing ``task_resources``.
    init_options : extra keyword arguments for ``ray.init``.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 retries: int = DEFAULT_RETRIES,
                 resources: Callable | None = None, init_options: dict | None = None) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise InvalidInputError(f"a Ray address is 'auto' or host:port, got {address!r}")
        if address not in (None, "auto"):
            _host_port(address)
        check_int("workers", workers, allow_none=True)
        check_int("retries", retries, 0)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InvalidInputError("the ray executor needs Ray: pip install "
                                    "'layertrim[ray]'") from None
        self.address = address
        self.workers = workers
        self.retries = retries
        self.resources = resources
        self.init_options = dict(init_options or {})
        self._started = False
        self._runs: list[dict] = []  # each unfinished as_completed's running tasks

    def connect(self) -> None:
        """Join the cluster (or start a local instance) now; a clear error if unreachable."""
        import ray

        if ray.is_initialized():
            return
        if self.address not in (None, "auto"):
            _reachable(self.address)
        options = {"include_dashboard": False, "logging_level": "WARNING",
                   "log_to_driver": True, **self.init_options}
        if self.address is None:
            options.setdefault("num_cpus", self.workers)
        try:
            ray.init(address=self.address or "local", **options)  # "local": always a new one
        except ConnectionError as e:
            raise InvalidInputError(f"cannot join a Ray cluster at {self.address}: {e}") from None
        self._started = True

    def close(self) -> None:
        """Cancel the tasks of every ``as_completed`` not yet finished (a consumer that
        stopped between results and still holds the results generator, whose own cleanup
        waits for it to be collected: Ctrl-C while a caller saved a finished layer), then
        disconnect if this executor connected (a local instance it started stops). Closing
        inside a loop over results therefore ends that run too."""
        import ray

        for pending in list(self._runs):
            if ray.is_initialized():  # (a cancel after shutdown would start a new instance)
                for ref in list(pending):
                    ray.cancel(ref, force=True)
            pending.clear()  # the generator's cleanup finds nothing left to cancel
        self._runs = []
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def _largest_node(self) -> tuple[float, float]:
        """(CPUs, memory bytes) of the largest live node."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        return (max((r.get("CPU", 0) for r in nodes), default=1) or 1,
                max((r.get("memory", 0) for r in nodes), default=0))

    def as_completed(self, fn: Callable, jobs: Sequence) -> Iterator[tuple[int, object]]:
        import ray

        jobs = list(jobs)
        if not jobs:
            return
        self.connect()
        task = ray.remote(_ray_solve)
        max_cpus, max_memory = self._largest_node()
        limit = self.workers or len(jobs)
        pending: dict = {}
        self._runs.append(pending)
        queue = list(range(len(jobs)))

        def submit(i: int) -> InvalidInputError | None:
            job = jobs[i]
            res = self.resources(job) if self.resources else task_resources(job, max_cpus)
            if max_memory and res.get("memory", 0) > max_memory:  # it would wait forever
                return InvalidInputError(
                    f"it needs about {res['memory'] / 2**30:.1f} GiB, more than any node of "
                    f"the cluster offers ({max_memory / 2**30:.1f} GiB)")
            threads = max(1, int(res.get("num_cpus", 1)))
            ref = task.options(max_retries=self.retries, retry_exceptions=False, **res).remote(
                fn, ray.put(job), threads)
            pending[ref] = i
            return None

        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    i = queue.pop(0)
                    refused = submit(i)
                    if refused is not None:
                        yield i, refused
                if not pending:
                    continue
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                        for name in ("W", "mask", "bias"):  # object-store arrays are read-only
                            a = getattr(result, name, None)
                            if isinstance(a, np.ndarray) and not a.flags.writeable:
                                setattr(result, name, a.copy())
                        yield i, result
                    except ray.exceptions.RayTaskError as e:  # the solver raised
                        cause = e.cause if isinstance(e.cause, BaseException) else e
                        yield i, cause
                    except (ray.exceptions.WorkerCrashedError,
                            ray.exceptions.NodeDiedError) as e:
                        yield i, WorkerDiedError(
                            f"its Ray worker died {self.retries + 1} times "
                            f"(retries={self.retries}): {type(e).__name__}")
                    except ray.exceptions.RayError as e:
                        yield i, e
        finally:  # Ctrl-C or an early stop: cancel what is still running
            if pending and ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref, force=True)
            pending.clear()
            self._runs = [r for r in self._runs if r is not pending]
