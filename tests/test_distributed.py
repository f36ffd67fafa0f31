"""dask.distributed: a 2-worker cluster gives what a single process gives, and survives a lost worker."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin

from stacembed import RunConfig, run
from stacembed.read import read_geoparquet


class KillFirstEmbedTask(WorkerPlugin):
    """Kills the worker process that starts the first stacembed task (once: a marker file says)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith("stacembed-") and os.path.exists(self.marker):
            os.unlink(self.marker)
            os._exit(1)


def embeddings(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_geoparquet(p)[1] for p in sorted(out.glob("*/*/*.parquet")) if p.parent.name != "model"}


def test_two_workers_match_one_process_and_survive_a_killed_worker(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=4, shape=(70, 90))
    common = dict(catalog=str(catalog), weights="random", formats=("geoparquet", "geotiff"), progress=False)
    single = run(RunConfig(out=tmp_path / "single", **common))
    expected = embeddings(tmp_path / "single")
    assert len(expected) == 4 == len(single.items_done)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        marker = tmp_path / "kill-once"
        marker.touch()
        with Client(cluster) as client:
            client.register_plugin(KillFirstEmbedTask(str(marker)), name="kill-first")
        summary = run(RunConfig(out=tmp_path / "cluster", dask_address=cluster.scheduler_address, **common))
        assert not marker.exists()  # a worker really was killed mid-run
    assert sorted(summary.items_done) == sorted(single.items_done)
    got = embeddings(tmp_path / "cluster")
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    leftovers = [p for p in (tmp_path / "cluster").rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".part"]
    assert not leftovers
    item_files = list((tmp_path / "cluster").glob("*/*/*.json"))
    assert sorted(p.stem for p in item_files if p.parent.name != "model") == sorted(single.items_done)


def test_workers_flag_runs_a_local_cluster(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.0", n_items=2, shape=(64, 64))
    summary = run(RunConfig(out=tmp_path / "out", catalog=str(catalog), weights="random", workers=2,
                            formats=("geoparquet",), progress=False))
    assert sorted(summary.items_done) == ["item-0", "item-1"]
    again = run(RunConfig(out=tmp_path / "out", catalog=str(catalog), weights="random", workers=2,
                          formats=("geoparquet",), progress=False))
    assert sorted(again.items_resumed) == ["item-0", "item-1"] and not again.items_done
