"""dask.distributed: a 2-worker cluster gives what a single process gives, and survives a lost worker."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin

from stacembed import RunConfig, run
from stacembed.embeddings import read_geoparquet
from stacembed.layout import is_temporary


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
    # One torch thread on both sides: torch's float sums depend on how a pass is split over
    # threads, so bit-for-bit comparisons need the same split (--threads).
    common = dict(catalog=str(catalog), weights="random", formats=("geoparquet", "geotiff"), threads=1, progress=False)
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
    leftovers = [p for p in (tmp_path / "cluster").rglob("*") if is_temporary(p)]
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


def files(out: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(out.glob("*/*/*"))
            if p.parent.name != "model" and p.suffix in (".parquet", ".tif")}


def assert_same_outputs(got_dir: Path, expected_dir: Path) -> None:
    """Same GeoParquet tables (every column, in order) and the same GeoTIFF pixels and metadata."""
    import pyarrow.parquet as pq
    import rasterio

    got, expected = files(got_dir), files(expected_dir)
    assert got.keys() == expected.keys() and got
    for name, path in expected.items():
        if path.suffix == ".parquet":
            assert pq.read_table(got[name]).equals(pq.read_table(path))
            assert pq.read_schema(got[name]).metadata == pq.read_schema(path).metadata
        else:
            with rasterio.open(got[name]) as a, rasterio.open(path) as b:
                np.testing.assert_array_equal(a.read(), b.read())
                assert (a.profile, a.scales, a.offsets, a.tags()) == (b.profile, b.scales, b.offsets, b.tags())


def test_tile_rows_cover_the_chip_rows_once():
    from affine import Affine
    from rasterio.crs import CRS

    from stacembed.chips import ChipGrid
    from stacembed.executors.cluster import tile_rows
    from stacembed.grid import Grid

    grid = ChipGrid(Grid(CRS.from_epsg(32633), Affine(10, 0, 0, 0, -10, 0), 5 * 32, 7 * 32), 32, 32)
    assert tile_rows(grid, 10) == [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]
    assert tile_rows(grid, 3) == [range(r, r + 1) for r in range(7)]  # at least one whole row
    assert tile_rows(grid, 4096) == [range(0, 7)]


def test_large_items_split_into_tiles_give_single_process_files_and_survive_a_killed_worker(
    synthetic_catalog, tmp_path,
):
    # 7 x 5 chips of 32 px per item; --tile-chips 10 makes 4 tile tasks and a merge per item.
    catalog = synthetic_catalog("1.1", n_items=2, shape=(200, 150), nodata=0, nodata_rows=40)
    common = dict(catalog=str(catalog), weights="random", chip_size=32, formats=("geoparquet", "geotiff"),
                  dtype="int8", threads=1, batch_size=5, progress=False)
    # The same thread split (see above), and batches of one chip row, so that the tiles (bands of
    # whole chip rows) put each chip in the same batch as the single run does: bit-for-bit
    # equality needs both, as torch's kernels may sum differently for another batch size.
    run(RunConfig(out=tmp_path / "single", **common))

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        marker = tmp_path / "kill-once"
        marker.touch()
        with Client(cluster) as client:
            client.register_plugin(KillFirstEmbedTask(str(marker)), name="kill-first")
        summary = run(RunConfig(out=tmp_path / "cluster", dask_address=cluster.scheduler_address, tile_chips=10,
                                **common))
        assert not marker.exists()  # a worker really was killed mid-run
    assert sorted(summary.items_done) == ["item-0", "item-1"] and summary.chips > 0
    assert_same_outputs(tmp_path / "cluster", tmp_path / "single")
    hidden = [p.name for p in (tmp_path / "cluster").rglob(".*")]
    assert not hidden  # no part files, part directories or temporary directories left


def test_a_rerun_keeps_the_parts_an_interrupted_run_finished(synthetic_catalog, tmp_path):
    from stacembed.executors.cluster import parts_dir, tile_rows
    from stacembed.job import Inputs, Run
    from stacembed.writers.parts import part_path, read_parts, write_part

    catalog = synthetic_catalog("1.0", n_items=1, shape=(200, 150))
    config = RunConfig(out=tmp_path / "out", catalog=str(catalog), weights="random", chip_size=32, workers=1,
                       tile_chips=10, formats=("geoparquet",), progress=False)
    inputs = Inputs.resolve(config)
    embedder, weights = inputs.load_embedder()
    frozen = Run.freeze(inputs, embedder, weights)
    provenance = frozen.provenance
    series = inputs.series[0]
    chip_grid = inputs.plan_item(series).chip_grid
    first = tile_rows(chip_grid, 10)[0]
    # A part left by an interrupted run, with values no model gives: the rerun must use it.
    marked = np.full((chip_grid.cols, provenance.embedding.dimensions), 7.0, "float32")
    from stacembed.chips import ChipBatch

    directory = parts_dir(frozen, series)
    directory.mkdir(parents=True)
    batches = [(ChipBatch([chip_grid.chip(r, c) for c in range(chip_grid.cols)], np.empty((chip_grid.cols, 0)),
                          np.ones(chip_grid.cols, "float32")), marked) for r in first]
    assert write_part(part_path(directory, first), batches, provenance.embedding) == len(first) * chip_grid.cols
    replayed = list(read_parts([part_path(directory, first)], chip_grid, provenance.embedding))
    assert [c.row for b, _ in replayed for c in b.chips] == [r for r in first for _ in range(chip_grid.cols)]

    summary = run(config)
    table, values = read_geoparquet(next((tmp_path / "out").glob("*/item-0/item-0.parquet")))
    assert summary.items_done == ["item-0"] and summary.chips == table.num_rows
    rows = table.column("chip_row").to_numpy()
    assert (values[rows < first.stop] == 7.0).all()
    assert not (values[rows >= first.stop] == 7.0).all()
    assert not directory.exists()


def test_part_files_round_trip_dense_embeddings(tmp_path):
    from affine import Affine
    from rasterio.crs import CRS

    from stacembed.chips import ChipBatch, ChipGrid
    from stacembed.grid import Grid
    from stacembed.writers import EmbeddingLayout
    from stacembed.writers.parts import part_path, read_parts, write_part

    grid = ChipGrid(Grid(CRS.from_epsg(32633), Affine(10, 0, 0, 0, -10, 0), 3 * 32, 2 * 32), 32, 32)
    layout = EmbeddingLayout(4, patches=(2, 2))
    values = np.random.default_rng(0).normal(size=(3, 4, 2, 2)).astype("float32")
    batch = ChipBatch([grid.chip(1, c) for c in range(3)], np.empty((3, 0)), np.array([1.0, 0.5, 0.75], "float32"))
    path = part_path(tmp_path, range(1, 2))
    assert write_part(path, [(batch, values)], layout) == 3
    [(got, embeddings)] = list(read_parts([path], grid, layout))
    assert got.chips == batch.chips
    np.testing.assert_array_equal(got.valid_fraction, batch.valid_fraction)
    np.testing.assert_array_equal(embeddings, values)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
