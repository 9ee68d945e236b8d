"""Where a sweep's runs execute: ``local`` (a pool of worker processes on this machine, :mod:`.run`),
``dask-local[:N]`` (a ``dask.distributed.LocalCluster`` of N worker processes, started and closed by the sweep) or
``dask://HOST:PORT`` (the workers of a running dask scheduler, on any number of machines).

Each task is one chunk of (point, seed) runs, :func:`.run.run_points_safely`: pure (its rows depend only on its
arguments), so dask may run it again when the worker running it dies (``retries``), and rows stream back as tasks
finish. dask is an optional dependency (``pip install 'faultlab[dask]'``), imported only when a dask executor is
used."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .params import SweepError

__all__ = ["CONNECT_TIMEOUT", "Executor", "default_jobs", "parse_executor", "run_dask"]

CONNECT_TIMEOUT = 10.0  # seconds to reach a dask scheduler before giving up
RETRIES = 3  # times a task is run again after its worker died
MAX_CHUNK = 64  # runs per task at most: a task costs the scheduler a round trip; a dead worker loses its task's runs
# what a LocalCluster's forkserver imports once, so that each worker forked from it starts with them (a run's modules)
PRELOAD = ["distributed", "faultlab.lab.sweep.run", "faultlab.lab.runner", "trio.testing"]


@dataclass(frozen=True)
class Executor:
    """``kind`` is ``local``, ``dask-local`` (``workers`` processes; None: one per CPU core) or ``dask``
    (``address`` ``tcp://HOST:PORT``)."""

    kind: str
    workers: int | None = None
    address: str | None = None

    @property
    def is_dask(self) -> bool:
        return self.kind != "local"

    def describe(self) -> str:
        if self.kind == "dask":
            return f"dask scheduler {self.address}"
        if self.kind == "dask-local":
            return f"dask LocalCluster of {self.workers or default_jobs()} workers"
        return "local process pool"


def parse_executor(value: str) -> Executor:
    """``local``, ``dask-local``, ``dask-local:N`` or ``dask://HOST:PORT``; :class:`SweepError` otherwise."""
    text = value.strip()
    if text == "local":
        return Executor("local")
    if text == "dask-local" or text.startswith("dask-local:"):
        n = text.partition(":")[2]
        if not n:
            return Executor("dask-local")
        if n.isdigit() and int(n) >= 1:
            return Executor("dask-local", workers=int(n))
        raise SweepError(f"--executor {value!r}: dask-local:N takes a number of worker processes (1 or more)")
    if text.startswith("dask://"):
        host, sep, port = text[len("dask://"):].rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return Executor("dask", address=f"tcp://{host}:{port}")
        raise SweepError(f"--executor {value!r}: write dask://HOST:PORT, e.g. dask://127.0.0.1:8786")
    raise SweepError(f"--executor {value!r}: use local, dask-local, dask-local:N or dask://HOST:PORT")


def default_jobs() -> int:
    """The cores this process may run on: the local pool's workers with --jobs auto, a LocalCluster's default."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _distributed() -> Any:
    try:
        import dask.distributed
    except ImportError:
        raise SweepError("the dask executors need dask.distributed, which is not installed: "
                         "pip install 'faultlab[dask]'") from None
    return dask.distributed


def guided_chunk(remaining: int, workers: int) -> int:
    """Runs in the next task: a quarter of each worker's share of what remains, at most :data:`MAX_CHUNK`: few
    large tasks while much remains, smaller ones towards the end so that the workers finish together."""
    return max(1, min(MAX_CHUNK, remaining // (workers * 4)))


def _start_fork_server() -> bool:
    """Start the fork server a LocalCluster's workers will be forked from, importing :data:`PRELOAD` (instead of
    dask's default, a fresh interpreter per worker that imports dask, then faultlab on its first task: about a
    second each on a small machine). Started before this process imports dask, so that both import at once. False
    where the platform has no fork servers."""
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return True


@contextmanager
def _forked_workers(forked: bool) -> Iterator[None]:
    """dask starts worker processes from the fork server (:func:`_start_fork_server`) inside this block."""
    if not forked:
        yield
        return
    import dask
    import distributed.utils

    # dask would otherwise set its own preload list (every optional package it knows, imported here first)
    if hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        yield


def _profiling(on: bool, dask_worker: Any = None) -> None:
    """Run on each worker (``Client.run``): stop (``on`` False) or restart the worker's statistical profiler,
    which samples the running task's stack every 10 ms and makes a sweep's runs about a quarter slower."""
    for name in ("profile", "profile-cycle"):
        callback = getattr(dask_worker, "periodic_callbacks", {}).get(name)
        if callback is not None:
            callback.start() if on else callback.stop()


@contextmanager
def client(executor: Executor) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``executor`` (its LocalCluster started here), closed after."""
    forked = executor.kind == "dask-local" and _start_fork_server()
    distributed = _distributed()
    if executor.kind == "dask-local":
        import dask

        # no statistical profiler in the workers: it samples each running task every 10 ms (runs ~25 % slower)
        with _forked_workers(forked), dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = distributed.LocalCluster(n_workers=executor.workers or default_jobs(), threads_per_worker=1,
                                               processes=True, host="127.0.0.1", dashboard_address=":0")
        try:
            with distributed.Client(cluster) as c:
                yield c
        finally:
            cluster.close()
        return
    try:
        c = distributed.Client(executor.address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise SweepError(f"cannot reach the dask scheduler at {executor.address} within {CONNECT_TIMEOUT:.0f} s "
                         f"({type(exc).__name__}: {exc}); check that `dask scheduler` runs there, that the host "
                         "and port are right and that no firewall blocks the port") from None
    try:
        try:
            c.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise SweepError(f"the dask scheduler at {executor.address} has no workers (none joined within "
                             f"{CONNECT_TIMEOUT:.0f} s); start some: dask worker {executor.address} --nworkers N"
                             ) from None
        yield c
    finally:
        c.close()


def run_dask(executor: Executor, todo: Sequence[tuple[dict[str, float], int]], *,
             run_chunk: Callable[[list[tuple[dict[str, float], int]]], list[dict[str, Any]]],
             error_row: Callable[[dict[str, float], int, BaseException], dict[str, Any]],
             record: Callable[[dict[str, Any]], None], stop: Callable[[], bool] | None = None,
             forget: Callable[[], None] | None = None) -> None:
    """Run ``todo`` on ``executor`` in chunks (:func:`guided_chunk`), each a task ``run_chunk(chunk)``
    (pure and picklable: the local pool's), handing each row to ``record`` as its chunk finishes. ``forget()`` runs
    on every worker first (long-lived workers: drop what an earlier sweep cached). A chunk whose workers kept dying
    (dask gives up after a few) or whose task raised gives ``error_row`` rows. ``stop()`` true: cancel what has not
    finished, return."""
    distributed = _distributed()
    with client(executor) as c:
        if forget is not None:
            c.run(forget)
        c.run(_profiling, False)  # a long-lived worker's profiler: off while the sweep runs, then on again
        try:
            _run_tasks(c, distributed, todo, run_chunk=run_chunk, error_row=error_row, record=record, stop=stop)
        finally:
            if executor.kind == "dask":  # the cluster goes on after the sweep
                c.run(_profiling, True)


def _run_tasks(c: Any, distributed: Any, todo: Sequence[tuple[dict[str, float], int]], *,
               run_chunk: Callable[[list[tuple[dict[str, float], int]]], list[dict[str, Any]]],
               error_row: Callable[[dict[str, float], int, BaseException], dict[str, Any]],
               record: Callable[[dict[str, Any]], None], stop: Callable[[], bool] | None) -> None:
    """:func:`run_dask`'s loop: chunks submitted as tasks (two per worker in flight), rows recorded as tasks
    finish."""
    workers = max(1, len(c.scheduler_info().get("workers", {})))
    queue = iter(todo)
    left = len(todo)
    pending: dict[Any, list[tuple[dict[str, float], int]]] = {}
    done = distributed.as_completed()

    def submit(n: int) -> None:
        nonlocal left
        for _ in range(n):
            part = list(itertools.islice(queue, guided_chunk(left, workers)))
            left -= len(part)
            if part:
                future = c.submit(run_chunk, part, retries=RETRIES, pure=True)
                pending[future] = part
                done.add(future)

    submit(workers * 2)
    for future in done:
        part = pending.pop(future)
        try:
            rows = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. its workers all died: those runs' rows say so
            rows = [error_row(point, s, exc) for point, s in part]
        for row in rows:
            record(row)
        if stop is not None and stop():
            c.cancel(list(pending))
            return
        submit(1)
