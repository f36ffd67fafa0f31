"""`stacembed change`: cosine distance between two dates' embeddings on one chip grid, in STAC.

The source is synthetic: one place at two dates with the same pixels except one block, and
another place elsewhere. Expectations come from the pixels changed, from rasterio reading the
embeddings COGs and the change maps, and from the bundled JSON schemas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import RES, make_catalog, make_item, write_cog

from stacembed import RunConfig, run
from stacembed.analysis.change import change_catalog, cosine_distance, select
from stacembed.analysis.derived import AnalysisError
from stacembed.embeddings import open_embeddings
from stacembed.validate import validate_paths

ORIGIN = (500000.0, 9100000.0)
SHAPE = (192, 320)  # 3 x 5 chips of 64 px
CHANGED = (slice(64, 128), slice(128, 192))  # the pixels of chip (1, 2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """``place-t0`` and ``place-t1``: the same grid and pixels at two dates, except chip (1, 2)'s
    block at t1; ``elsewhere``: another grid, at t1's date."""
    root = tmp_path_factory.mktemp("change-source")
    before = make_item(root, "place-t0", dialect="1.1", origin=ORIGIN, shape=SHAPE, seed=1)
    after = make_item(root, "place-t1", dialect="1.1", origin=ORIGIN, shape=SHAPE, seed=1)
    after["properties"]["datetime"] = "2024-06-15T10:00:00Z"
    transform = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])
    for asset in after["assets"].values():
        path = root / "place-t1" / asset["href"]
        with rasterio.open(path) as ds:
            data = ds.read(1)
        data[CHANGED] = data[CHANGED][::-1, ::-1] // 3 + 2000  # another texture and brightness
        write_cog(path, data, transform)
    elsewhere = make_item(root, "elsewhere", dialect="1.1", origin=(530000.0, 9100000.0), shape=SHAPE, seed=2)
    elsewhere["properties"]["datetime"] = "2024-06-15T10:00:00Z"
    return make_catalog(root, [before, after, elsewhere])


@pytest.fixture(scope="module")
def runs(source, tmp_path_factory):
    base = tmp_path_factory.mktemp("change-runs")
    run(RunConfig(out=base / "both", catalog=str(source), weights="random", progress=False))
    run(RunConfig(out=base / "parquet", catalog=str(source), weights="random", formats=("geoparquet",),
                  progress=False))
    return {"both": base / "both", "parquet": base / "parquet"}


def change_file(out: Path, item_id: str) -> Path:
    return out / "change" / item_id / f"{item_id}.tif"


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_identical_dates_give_zero_change_everywhere(runs, tmp_path):
    result = change_catalog(runs["both"], before="2024-02-15", after="2024-02-15", out=tmp_path, progress=False)
    assert result.items == ("place-t0--place-t0",)
    values = read(change_file(tmp_path, "place-t0--place-t0"))
    with rasterio.open(next(runs["both"].glob("*/place-t0/place-t0.tif"))) as emb:
        no_chip = np.isnan(emb.read()).all(axis=0)
    assert np.isnan(values[no_chip]).all() and (values[~no_chip] == 0).all()


def test_an_altered_block_of_pixels_gives_the_largest_distance_exactly_there(runs, tmp_path):
    result = change_catalog(runs["both"], before="2024-02", after="2024-06-01/2024-06-30", out=tmp_path,
                            progress=False)
    assert result.items == ("place-t0--place-t1",)  # `elsewhere` (June too) has no partner: left out
    values = read(change_file(tmp_path, "place-t0--place-t1"))
    assert values.shape == (3, 5) and values.dtype == np.float32
    assert np.unravel_index(np.nanargmax(values), values.shape) == (1, 2)
    others = np.delete(values.ravel(), 1 * 5 + 2)
    assert values[1, 2] > 1e-3 and np.nanmax(others) < values[1, 2] / 100
    stac = json.loads(change_file(tmp_path, "place-t0--place-t1").with_suffix(".json").read_text())
    assert stac["properties"]["stacembed:change"]["max_distance"] == pytest.approx(float(values[1, 2]))


def test_the_change_item_spans_both_dates_on_the_embeddings_grid_and_validates(runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(runs["both"], out)
    change_catalog(out, before="place-t0", after="place-t1", out=out, progress=False)  # ids; into the run's --out
    item_file = change_file(out, "place-t0--place-t1").with_suffix(".json")
    stac = json.loads(item_file.read_text())
    props = stac["properties"]
    assert props["datetime"] is None
    assert (props["start_datetime"], props["end_datetime"]) == ("2024-02-15T10:00:00Z", "2024-06-15T10:00:00Z")
    derived = sorted((item_file.parent / link["href"]).resolve() for link in stac["links"]
                     if link["rel"] == "derived_from")
    assert derived == sorted(next(out.glob(f"*-stacembed-*/{i}/{i}.json")) for i in ("place-t0", "place-t1"))
    with rasterio.open(next(out.glob("*-stacembed-*/place-t0/place-t0.tif"))) as emb, \
            rasterio.open(item_file.with_suffix(".tif")) as change:
        assert (change.crs, change.transform, change.width, change.height) == \
               (emb.crs, emb.transform, emb.width, emb.height)
        assert change.dtypes[0] == "float32" and np.isnan(change.nodata)
    asset = stac["assets"]["change"]
    assert asset["proj:transform"] == list(change.transform)[:6] and asset["file:size"] > 0
    reports = list(validate_paths([out / "catalog.json"]))
    assert len(reports) == 1 + 1 + 3 + 1 + 1  # catalog, embeddings collection + 3 items, change collection + 1
    assert [r.line(strict=True) for r in reports if r.line(strict=True)] == []
    assert [i.id for i in open_embeddings(out)] == ["elsewhere", "place-t0", "place-t1"]


def test_geoparquet_only_embeddings_give_the_same_change_map(runs, tmp_path):
    change_catalog(runs["both"], before="place-t0", after="place-t1", out=tmp_path / "cog", progress=False)
    change_catalog(runs["parquet"], before="place-t0", after="place-t1", out=tmp_path / "parquet", progress=False)
    np.testing.assert_array_equal(read(change_file(tmp_path / "cog", "place-t0--place-t1")),
                                  read(change_file(tmp_path / "parquet", "place-t0--place-t1")))


def test_bad_input_is_one_line(runs, tmp_path, cli):
    def error(*args):
        result = cli("change", runs["both"], *args, "--out", tmp_path / "x", "-q")
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.stderr
        return lines[0]

    line = error("--before", "place-t0", "--after", "elsewhere")
    assert "lie on different chip grids" in line and "place-t0: EPSG:32725, 5x3 px" in line
    assert "matches no embedding item" in error("--before", "2030", "--after", "place-t1")
    assert "neither an item id" in error("--before", "nope", "--after", "place-t1")
    assert "--before matches 2 items on one chip grid (place-t0, place-t1)" in \
           error("--before", "2024", "--after", "place-t1")
    assert not (tmp_path / "x").exists()
    change_catalog(runs["both"], before="place-t0", after="place-t1", out=tmp_path / "x", progress=False)
    assert "exists already" in error("--before", "place-t0", "--after", "place-t1")
    mixed = tmp_path / "mixed"
    shutil.copytree(runs["both"], mixed)
    item_file = next(mixed.glob("*/place-t1/place-t1.json"))
    item = json.loads(item_file.read_text())
    item["properties"]["emb:runtime_parameters"]["pooling"] = "max"
    item_file.write_text(json.dumps(item))
    result = cli("change", mixed, "--before", "place-t0", "--after", "place-t1", "--out", tmp_path / "x", "-q")
    assert result.exit_code == 1 and "2 different models or dimensions" in result.stderr


def test_the_command_line_reports_the_pairs(runs, tmp_path, cli, caplog):
    result = cli("change", runs["both"], "--before", "2024-02-15", "--after", "2024-06-15", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 change map(s): place-t0--place-t1; catalog: ")
    assert "left out: elsewhere" in caplog.text  # the warning for the item without a partner


def test_select_takes_item_ids_or_times(runs):
    items = list(open_embeddings(runs["both"]))
    assert [i.id for i in select(items, "2024-06", "--after")] == ["elsewhere", "place-t1"]
    assert [i.id for i in select(items, "2024-02-15T10:00:00Z", "--before")] == ["place-t0"]
    assert [i.id for i in select(items, "2024-03-01/..", "--after")] == ["elsewhere", "place-t1"]
    assert [i.id for i in select(items, "place-t1, elsewhere", "--after")] == ["elsewhere", "place-t1"]
    with pytest.raises(AnalysisError, match="matches no embedding item"):
        select(items, "../2023", "--before")


def test_cosine_distance():
    a = np.array([[1.0, 0.0, 0.0, 2.0, np.nan], [0.0, 1.0, 0.0, 2.0, 1.0]], "float32")
    b = np.array([[1.0, 1.0, 0.0, -2.0, 1.0], [0.0, 0.0, 0.0, -2.0, 1.0]], "float32")
    np.testing.assert_array_equal(cosine_distance(a, b), np.array([0.0, 1.0, np.nan, 2.0, np.nan], "float32"))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(96, 50)).astype("float32")
    assert (cosine_distance(vectors, vectors) == 0).all()  # identical vectors: exactly no change
