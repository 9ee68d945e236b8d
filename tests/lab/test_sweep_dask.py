"""`faultlab sweep --executor dask-local|dask://`: the runs of a sweep on dask workers (separate processes of a real
LocalCluster on 127.0.0.1), recorded as the local pool records them."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest
from typer.testing import CliRunner

from faultlab.cli import app
from faultlab.lab.sweep.run import load_rows
from faultlab.lab.sweep import Executor, SweepError, parse_executor, parse_param, sweep

distributed = pytest.importorskip("dask.distributed", reason="pip install 'faultlab[dask]'")

PARAMS = [parse_param("device.invite_wait=1,4"), parse_param("link.loss=0,20")]


def strip(rows):
    return sorted(({k: v for k, v in r.items() if k != "wall"} for r in rows), key=lambda r: (str(r["point"]),
                                                                                               r["seed"]))


@pytest.fixture(scope="module")
def cluster():
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                 host="127.0.0.1")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    return sweep("S16", PARAMS, runs=4, seed=3, out=tmp_path_factory.mktemp("local"), jobs=2)


def on(cluster):
    return Executor("dask", address=cluster.scheduler_address)


def test_a_scheduler_gives_the_rows_of_the_local_pool(cluster, local_rows, tmp_path):
    rows = sweep("S16", PARAMS, runs=4, seed=3, out=tmp_path, executor=on(cluster))
    assert len(rows) == 16 and strip(rows) == strip(local_rows)
    assert strip(load_rows(tmp_path / "runs.jsonl")) == strip(local_rows)  # as recorded, one per line


def test_an_interrupted_dask_sweep_resumes_without_redoing_runs(cluster, local_rows, tmp_path):
    done = []
    partial = sweep("S16", PARAMS, runs=4, seed=3, out=tmp_path, executor=on(cluster),
                    on_row=lambda row, n, total: done.append(row), stop=lambda: len(done) >= 3)
    assert 3 <= len(partial) < 16
    again = []
    rows = sweep("S16", PARAMS, runs=4, seed=3, out=tmp_path, executor=on(cluster),
                 on_row=lambda row, n, total: again.append(row))
    assert len(again) == 16 - len(partial)  # only the missing runs ran
    assert strip(rows) == strip(local_rows)
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 16


def test_a_killed_worker_loses_no_rows(cluster, local_rows, tmp_path):
    client = distributed.Client(cluster)
    killed = []

    def kill_one(row, n, total):
        if not killed:  # the sweep is under way: a worker with runs in flight dies (SIGKILL, no goodbye)
            busy = {addr: keys for addr, keys in client.processing().items() if keys}
            addr = next(iter(busy))
            pid = client.run(os.getpid, workers=[addr])[addr]
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, len(busy[addr])))

    try:
        rows = sweep("S16", PARAMS, runs=4, seed=3, out=tmp_path, executor=on(cluster), on_row=kill_one)
    finally:
        client.close()
    assert killed and killed[0][1] >= 1  # it had tasks
    assert all(r["error"] is None for r in rows)
    assert strip(rows) == strip(local_rows)


def test_the_cli_runs_its_own_local_cluster(local_rows, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "-s", "S16", "-P", "device.invite_wait=1,4", "-P", "link.loss=0,20",
                                      "--runs", "4", "--seed", "3", "--executor", "dask-local:2", "--out",
                                      str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert "dask LocalCluster of 2 workers" in " ".join(result.output.split())
    assert strip(load_rows(tmp_path / "runs.jsonl")) == strip(local_rows)


@pytest.mark.parametrize("value, message", [
    ("dask", "use local, dask-local, dask-local:N or dask://HOST:PORT"),
    ("dask-local:0", "dask-local:N takes a number"),
    ("dask://127.0.0.1", "write dask://HOST:PORT"),
])
def test_a_bad_executor_says_what_to_write(value, message, tmp_path):
    with pytest.raises(SweepError, match=message):
        parse_executor(value)
    result = CliRunner().invoke(app, ["sweep", "-s", "S16", "-P", "device.invite_wait=1", "--executor", value,
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs.jsonl").exists()


def test_an_unreachable_scheduler_says_what_to_check(tmp_path, monkeypatch):
    import faultlab.lab.sweep.executors as executors

    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SweepError, match=f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}.*dask scheduler"):
        sweep("S16", PARAMS, runs=1, seed=1, out=tmp_path, executor=parse_executor(f"dask://127.0.0.1:{port}"))


def test_a_scheduler_without_workers_says_to_start_some(tmp_path, monkeypatch):
    import faultlab.lab.sweep.executors as executors

    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 1.0)
    empty = distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=":0", host="127.0.0.1")
    try:
        with pytest.raises(SweepError, match="has no workers.*dask worker tcp://127.0.0.1"):
            sweep("S16", PARAMS, runs=1, seed=1, out=tmp_path,
                  executor=Executor("dask", address=empty.scheduler_address))
    finally:
        empty.close()
    assert not (tmp_path / "runs.jsonl").read_text()


def test_without_dask_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(SweepError, match=r"pip install 'faultlab\[dask\]'"):
        sweep("S16", PARAMS, runs=1, seed=1, out=tmp_path, executor=parse_executor("dask-local:1"))


def test_faultlab_starts_without_importing_dask():
    import subprocess

    code = "import sys, faultlab.cli, faultlab.lab.sweep; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("runs, workers", [(1, 1), (7, 2), (1000, 2), (100_000, 16)])
def test_tasks_shrink_towards_the_end_so_the_workers_finish_together(runs, workers):
    from faultlab.lab.sweep.executors import MAX_CHUNK, guided_chunk

    sizes, left = [], runs
    while left:
        sizes.append(guided_chunk(left, workers))
        left -= sizes[-1]
    assert sum(sizes) == runs and max(sizes) <= MAX_CHUNK
    assert sizes == sorted(sizes, reverse=True)  # never a large task last
    assert sizes[-1] == 1 and sizes[-workers:] == [1] * min(workers, len(sizes))
    if runs >= 1000:  # far fewer tasks than runs: the scheduler's round trip is paid per task
        assert len(sizes) < runs / 10


def test_a_scheduler_and_workers_started_as_the_docs_say_give_the_rows_of_the_local_pool(local_rows, tmp_path):
    """`dask scheduler` and `dask worker ADDRESS --nworkers 2 --nthreads 1` as separate processes, as on several
    machines (docs/tuning-timeouts.md), then `faultlab sweep --executor dask://HOST:PORT`."""
    import json
    import subprocess
    import time

    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 30
        while not info.exists() or not info.read_text().strip():
            assert time.monotonic() < deadline and procs[0].poll() is None, "dask scheduler did not start"
            time.sleep(0.05)  # polling another process's file, with a bound
        address = json.loads(info.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", "2",
                                       "--nthreads", "1", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out = tmp_path / "sweep"
        result = CliRunner().invoke(app, ["sweep", "-s", "S16", "--param", "device.invite_wait=1,4",
                                          "--param", "link.loss=0,20", "--runs", "4", "--seed", "3", "--out",
                                          str(out), "--executor", "dask://" + address.removeprefix("tcp://")])
        assert result.exit_code == 0, result.output
        assert strip(load_rows(out / "runs.jsonl")) == strip(local_rows)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
