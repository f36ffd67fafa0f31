"""`stacembed cluster`: streaming k-means over embedding catalogs, published as class maps in STAC.

Expectations come from rasterio and pyarrow reading the files written, from the embeddings COGs
of the same runs, and from the bundled JSON schemas (classification v2.0.0 among them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import make_catalog, make_item

from stacembed import RunConfig, run
from stacembed.analysis.cluster import NODATA, Centroids, cluster_catalog
from stacembed.analysis.derived import AnalysisError, NoChipError, item_grid
from stacembed.embeddings import open_embeddings
from stacembed.errors import ConfigError, ReadError
from stacembed.validate import check, validate_paths

CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Embeddings of the sample catalog, and of a synthetic one (both formats, GeoParquet only,
    GeoTIFF only) whose first item has no data in its top chip row (no chips there: 255 in class
    maps) and whose ``item-empty`` has no data at all (no chip kept)."""
    base = tmp_path_factory.mktemp("cluster-runs")
    root = base / "source"
    items = [
        make_item(root, "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(200, 300), seed=1,
                  nodata=0, nodata_rows=64),
        make_item(root, "item-1", dialect="1.1", origin=(510000.0, 9100000.0), shape=(200, 300), seed=2),
        make_item(root, "item-empty", dialect="1.1", origin=(520000.0, 9100000.0), shape=(200, 300), seed=3,
                  nodata=0, nodata_rows=200),
    ]
    source = make_catalog(root, items)
    run(RunConfig(out=base / "sample", weights="random", progress=False))
    run(RunConfig(out=base / "synthetic", catalog=str(source), weights="random", progress=False))
    run(RunConfig(out=base / "parquet-only", catalog=str(source), weights="random", formats=("geoparquet",),
                  progress=False))
    run(RunConfig(out=base / "tiff-only", catalog=str(source), weights="random", formats=("geotiff",),
                  progress=False))
    return {name: base / name for name in ("sample", "synthetic", "parquet-only", "tiff-only")}


def class_maps(out: Path) -> dict[str, np.ndarray]:
    maps = {}
    for path in sorted(out.glob("*/*/*.tif")):
        with rasterio.open(path) as ds:
            maps[path.stem] = ds.read(1)
    return maps


def labels(out: Path) -> dict[str, list]:
    return {path.stem: pq.read_table(path, columns=["chip_row", "chip_col", "cluster"]).to_pylist()
            for path in sorted(out.glob("*/*/*.parquet"))}


def embeddings_cog(run_out: Path, item_id: str) -> Path:
    return next(run_out.glob(f"*/{item_id}/{item_id}.tif"))


def test_clusters_are_reproducible_with_a_seed(runs, tmp_path):
    first = cluster_catalog(runs["synthetic"], k=4, seed=7, out=tmp_path / "a", progress=False)
    second = cluster_catalog(runs["synthetic"], k=4, seed=7, out=tmp_path / "b", progress=False)
    # 2 items of 4 x 5 chips; the bottom row is 8 px of data (skipped), and so is item-0's top row
    assert first.chips == second.chips == 15 + 10
    np.testing.assert_array_equal(first.centroids.values, second.centroids.values)
    maps_a, maps_b = class_maps(tmp_path / "a"), class_maps(tmp_path / "b")
    assert list(maps_a) == ["item-0", "item-1", "item-empty"]
    assert (maps_a["item-empty"] == NODATA).all()
    for item_id in maps_a:
        np.testing.assert_array_equal(maps_a[item_id], maps_b[item_id])
    assert labels(tmp_path / "a") == labels(tmp_path / "b")
    used = np.unique(np.concatenate([m[m != NODATA] for m in maps_a.values()]))
    assert len(used) > 1 and used.max() < 4  # several clusters, all of them < k


def test_class_map_is_georeferenced_like_the_embeddings_cog(runs, tmp_path):
    result = cluster_catalog(runs["synthetic"], k=3, out=tmp_path / "out", progress=False)
    for item_id in result.items:
        with rasterio.open(embeddings_cog(runs["synthetic"], item_id)) as emb, \
                rasterio.open(tmp_path / "out" / "clusters-k3" / item_id / f"{item_id}.tif") as classes:
            assert (classes.crs, classes.transform, classes.width, classes.height) == \
                   (emb.crs, emb.transform, emb.width, emb.height)
            assert (classes.count, classes.dtypes[0], classes.nodata) == (1, "uint8", 255)
            no_chip = np.isnan(emb.read()).all(axis=0)
            values = classes.read(1)
        assert ((values == NODATA) == no_chip).all()
        if item_id == "item-0":
            assert no_chip[0].all() and not no_chip[1:3].any()  # the top chip row had no data
        table = pq.read_table(tmp_path / "out" / "clusters-k3" / item_id / f"{item_id}.parquet")
        rows, cols = table.column("chip_row").to_numpy(), table.column("chip_col").to_numpy()
        np.testing.assert_array_equal(values[rows, cols], table.column("cluster").to_numpy())
        assert set(table.column("source_item").to_pylist()) == ({item_id} if table.num_rows else set())
        frame = gpd.read_parquet(tmp_path / "out" / "clusters-k3" / item_id / f"{item_id}.parquet")
        assert frame.crs.to_string() == "OGC:CRS84" and len(frame) == table.num_rows
        assert str(frame["cluster"].dtype) == "uint8"
        geo = json.loads(table.schema.metadata[b"geo"])
        assert geo["primary_column"] == "geometry"
        assert ("bbox" in geo["columns"]["geometry"]) == (item_id != "item-empty")  # bbox of the chips written
        stac = json.loads((tmp_path / "out" / "clusters-k3" / item_id / f"{item_id}.json").read_text())
        asset = stac["assets"]["classes"]
        assert asset["proj:transform"] == list(classes.transform)[:6]
        assert asset["proj:shape"] == [classes.height, classes.width]


def test_a_geoparquet_only_catalog_gets_the_grid_of_its_cog_and_the_same_clusters(runs, tmp_path):
    for cog_item, parquet_item in zip(open_embeddings(runs["synthetic"]), open_embeddings(runs["parquet-only"]),
                                      strict=True):
        assert "geotiff" not in parquet_item.hrefs
        if parquet_item.id == "item-empty":  # no chip and no COG: no grid, and no class map below
            with pytest.raises(NoChipError):
                item_grid(parquet_item)
            continue
        with rasterio.open(cog_item.hrefs["geotiff"]) as ds:
            built, exact = item_grid(parquet_item)
            assert exact and built.crs == ds.crs and (built.width, built.height) == (ds.width, ds.height)
            assert built.transform == ds.transform  # from the source's proj:transform, as the run placed it
    both = cluster_catalog(runs["synthetic"], k=3, seed=2, out=tmp_path / "both", progress=False)
    only = cluster_catalog(runs["parquet-only"], k=3, seed=2, out=tmp_path / "only", progress=False)
    np.testing.assert_array_equal(both.centroids.values, only.centroids.values)
    maps_both, maps_only = class_maps(tmp_path / "both"), class_maps(tmp_path / "only")
    assert list(maps_only) == ["item-0", "item-1"]
    for item_id in maps_only:
        np.testing.assert_array_equal(maps_both[item_id], maps_only[item_id])


def test_apply_reproduces_the_labels(runs, tmp_path):
    fitted = cluster_catalog(runs["sample"], k=3, seed=0, out=tmp_path / "fit", progress=False)
    collection = tmp_path / "fit" / "clusters-k3" / "collection.json"
    for i, href in enumerate([fitted.centroids_file, collection, tmp_path / "fit"]):
        applied = cluster_catalog(runs["sample"], centroids=href, out=tmp_path / f"apply{i}", progress=False)
        np.testing.assert_array_equal(applied.centroids.values, fitted.centroids.values)
        assert labels(tmp_path / f"apply{i}") == labels(tmp_path / "fit")
        maps = class_maps(tmp_path / f"apply{i}")
        for item_id, values in class_maps(tmp_path / "fit").items():
            np.testing.assert_array_equal(maps[item_id], values)
    stored = Centroids.read(fitted.centroids_file)
    assert (stored.k, stored.dimensions, stored.seed, stored.chips) == (3, 96, 0, 36)
    assert stored.model["model"] == "stacembed-demo-landsat"
    # The applied collection links the centroids it used, and stores a copy of them.
    applied = json.loads((tmp_path / "apply0" / "clusters-k3" / "collection.json").read_text())
    assert [link["title"] for link in applied["links"] if link["rel"] == "derived_from"] == \
           ["Embeddings", "Centroids applied"]
    assert applied["assets"]["centroids"]["href"] == "./centroids.parquet"


def test_the_class_map_has_a_colour_table_matching_the_classes(runs, tmp_path):
    cluster_catalog(runs["sample"], k=5, out=tmp_path, progress=False)
    item_file = next(tmp_path.glob("clusters-k5/*/*.json"))
    stac = json.loads(item_file.read_text())
    classes = stac["assets"]["classes"]["classification:classes"]
    with rasterio.open(item_file.with_suffix(".tif")) as ds:
        colormap = ds.colormap(1)
    assert colormap[255] == (0, 0, 0, 0)
    for entry in classes[:-1]:
        hint = entry["color_hint"]
        assert colormap[entry["value"]] == (int(hint[:2], 16), int(hint[2:4], 16), int(hint[4:], 16), 255)
    assert [c["value"] for c in classes] == [0, 1, 2, 3, 4, 255] and classes[-1]["nodata"] is True
    assert sum(c["count"] for c in classes[:-1]) == 9  # every chip of a sample item, in one class each
    assert len({c["color_hint"] for c in classes[:-1]}) == 5


def test_outputs_validate_against_the_schemas_they_declare(runs, tmp_path):
    out = runs["synthetic"].parent / "into-the-run"
    shutil.copytree(runs["synthetic"], out)
    cluster_catalog(out, k=3, out=out, progress=False)  # beside the embeddings, in their --out
    reports = list(validate_paths([out / "catalog.json"]))
    assert len(reports) == 1 + 2 * 4  # the catalog, and two collections of three items each
    assert [r.line(strict=True) for r in reports if r.line(strict=True)] == []
    item = json.loads(next(out.glob("clusters-k3/item-1/item-1.json")).read_text())
    assert CLASSIFICATION in item["stac_extensions"]
    assert {"derived_from", "root", "parent", "collection"} <= {link["rel"] for link in item["links"]}
    derived = next(link["href"] for link in item["links"] if link["rel"] == "derived_from")
    assert (out / "clusters-k3" / "item-1" / derived).resolve() == next(out.glob("*-stacembed-*/item-1/item-1.json"))
    assert item["properties"]["processing:software"]["scikit-learn"]
    # The embedding items are still all `open_embeddings` finds there.
    assert [i.id for i in open_embeddings(out)] == ["item-0", "item-1", "item-empty"]
    # The classification schema is really checked: a class name it forbids fails.
    item["assets"]["classes"]["classification:classes"][0]["name"] = "cluster 0"
    assert any("classification" in error for error in check(item).errors)


def test_bad_input_is_one_line(runs, tmp_path, cli):
    def error(*args):
        result = cli("cluster", *args, "-q")
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.stderr
        return lines[0]

    source = Path(__file__).resolve().parents[1] / "catalogs" / "sample" / "catalog.json"
    assert "holds no embedding items" in error(source, "--k", "3", "--out", tmp_path / "x")
    assert "--k 37 is more than the 36 chips" in error(runs["sample"], "--k", "37", "--out", tmp_path / "x")
    assert "--k must be between 1 and 255" in error(runs["sample"], "--k", "256", "--out", tmp_path / "x")
    assert "give the number of clusters" in error(runs["sample"], "--out", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # Mixed models: one item says it was made by another model.
    mixed = tmp_path / "mixed"
    shutil.copytree(runs["sample"], mixed)
    item_file = next(mixed.glob("*/L7-olinda-r0c1/L7-olinda-r0c1.json"))
    item = json.loads(item_file.read_text())
    item["properties"]["emb:runtime_parameters"]["mlm:name"] = "another-model"
    item_file.write_text(json.dumps(item))
    assert "2 different models or dimensions" in error(mixed, "--k", "2", "--out", tmp_path / "x")
    # Centroids of another dimension, or another model, are refused.
    fitted = cluster_catalog(runs["sample"], k=2, out=tmp_path / "fit", progress=False)
    other = tmp_path / "other.parquet"
    Centroids(np.zeros((2, 8), "float32"), {**fitted.centroids.model, "dimensions": 8}).write(other)
    assert "holds 96-d embeddings" in error(runs["sample"], "--apply", other, "--out", tmp_path / "x")
    Centroids(fitted.centroids.values, {**fitted.centroids.model, "model": "another-model"}).write(other)
    assert "fitted on another-model" in error(runs["sample"], "--apply", other, "--out", tmp_path / "x")
    assert "--k 3 differs" in error(runs["sample"], "--apply", fitted.centroids_file, "--k", "3",
                                    "--out", tmp_path / "x")
    assert "no stacembed:centroids" in error(runs["sample"], "--apply", next(runs["sample"].glob("*/items.parquet")),
                                             "--out", tmp_path / "x")
    # An output collection is never overwritten or mixed, and is named like a directory.
    assert "exists already" in error(runs["sample"], "--k", "2", "--out", tmp_path / "fit")
    assert "not a plain directory name" in error(runs["sample"], "--k", "2", "--out", tmp_path / "x",
                                                 "--output-collection", "../up")
    assert not (tmp_path / "x").exists()


def test_the_command_line_reports_what_it_wrote(runs, tmp_path, cli):
    result = cli("cluster", runs["sample"], "--k", "2", "--seed", "3", "--out", tmp_path, "-q")
    assert result.exit_code == 0 and result.output == ""
    result = cli("cluster", runs["sample"], "--apply", tmp_path, "--out", tmp_path, "--output-collection", "again")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("36 chips of 4 item(s) in 2 clusters")
    catalog = json.loads((tmp_path / "catalog.json").read_text())
    assert sorted(link["href"] for link in catalog["links"] if link["rel"] == "child") == \
           ["./again/collection.json", "./clusters-k2/collection.json"]
    fitted, applied = tmp_path / "clusters-k2", tmp_path / "again"
    for path in sorted(fitted.glob("*/*.tif")):
        with rasterio.open(path) as a, rasterio.open(applied / path.parent.name / path.name) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_no_table_writes_the_same_class_maps_and_no_chip_table(runs, tmp_path, cli):
    """--no-table: class maps only (equal to those written with the table), no Parquet file, no
    labels asset, and the collection declares none; still valid STAC."""
    with_table, without = tmp_path / "with", tmp_path / "without"
    assert cli("cluster", runs["synthetic"], "--k", "3", "--out", with_table, "-q").exit_code == 0
    result = cli("cluster", runs["synthetic"], "--k", "3", "--out", without, "--no-table")
    assert result.exit_code == 0, result.output
    assert " in 3 clusters; centroids: " in result.stdout
    maps = class_maps(with_table)
    assert maps and {name: m.tobytes() for name, m in class_maps(without).items()} == \
           {name: m.tobytes() for name, m in maps.items()}
    assert [p.name for p in without.rglob("*.parquet")] == ["centroids.parquet"]
    for item_file in (without / "clusters-k3").glob("*/*.json"):
        assert set(json.loads(item_file.read_text())["assets"]) == {"classes"}
    collection = json.loads((without / "clusters-k3" / "collection.json").read_text())
    assert set(collection["item_assets"]) == {"classes"}
    assert [r.line(strict=True) for r in validate_paths([without / "catalog.json"]) if r.line(strict=True)] == []


def test_api_errors_are_stacembed_errors(runs, tmp_path):
    with pytest.raises(ConfigError):
        cluster_catalog(runs["sample"], k=0, out=tmp_path, progress=False)
    with pytest.raises(AnalysisError):
        cluster_catalog(runs["sample"], k=100, out=tmp_path, progress=False)
    with pytest.raises(ReadError):
        Centroids.read(tmp_path / "missing.parquet")


def test_without_the_sources_proj_fields_the_grid_ends_at_the_last_chip(runs, tmp_path):
    """A GeoParquet whose source item stated no proj:shape/proj:transform: the grid is rebuilt
    from the chips alone, on the same pixels, up to the last row and column that kept a chip."""
    out = tmp_path / "no-proj"
    shutil.copytree(runs["parquet-only"], out)
    for path in out.glob("*/*/*.parquet"):
        if path.name != "items.parquet":
            table = pq.read_table(path)
            pq.write_table(table.drop_columns(["proj:code", "proj:shape", "proj:transform"]), path)
    for item, cog_item in zip(open_embeddings(out), open_embeddings(runs["synthetic"]), strict=True):
        if item.id == "item-empty":
            continue
        built, exact = item_grid(item)
        with rasterio.open(cog_item.hrefs["geotiff"]) as ds:
            assert not exact and (built.width, built.height) == (ds.width, ds.height - 1)  # the bottom row: no chip
            assert built.crs == ds.crs and built.transform.almost_equals(ds.transform, precision=1e-6)
    result = cluster_catalog(out, k=3, seed=2, out=tmp_path / "clusters", progress=False)
    reference = cluster_catalog(runs["synthetic"], k=3, seed=2, out=tmp_path / "reference", progress=False)
    assert result.chips == reference.chips
    for item_id, values in class_maps(tmp_path / "clusters").items():
        np.testing.assert_array_equal(values, class_maps(tmp_path / "reference")[item_id][:-1])


def test_a_geotiff_only_catalog_gives_the_clusters_of_its_geoparquet(runs, tmp_path):
    """Chips read from the COGs (no GeoParquet) are the GeoParquet's: the same centroids, class
    maps and labels tables; the item without a chip still gets its (empty) class map and table."""
    tiff = cluster_catalog(runs["tiff-only"], k=3, seed=2, out=tmp_path / "tiff", progress=False)
    parquet = cluster_catalog(runs["parquet-only"], k=3, seed=2, out=tmp_path / "parquet", progress=False)
    assert tiff.chips == parquet.chips == 15 + 10
    np.testing.assert_array_equal(tiff.centroids.values, parquet.centroids.values)
    maps_tiff, maps_parquet = class_maps(tmp_path / "tiff"), class_maps(tmp_path / "parquet")
    assert list(maps_tiff) == ["item-0", "item-1", "item-empty"] and (maps_tiff["item-empty"] == NODATA).all()
    for item_id, values in maps_parquet.items():
        np.testing.assert_array_equal(maps_tiff[item_id], values)
    for item_id in maps_tiff:
        path = next((tmp_path / "tiff").glob(f"*/{item_id}/{item_id}.parquet"))
        frame, table = gpd.read_parquet(path), pq.read_table(path)
        assert frame.crs.to_string() == "OGC:CRS84" and len(frame) == table.num_rows
        if item_id == "item-empty":
            assert table.num_rows == 0
            continue
        expected_path = next((tmp_path / "parquet").glob(f"*/{item_id}/{item_id}.parquet"))
        expected = pq.read_table(expected_path)
        assert table.schema.names == expected.schema.names
        for name in ("id", "chip_row", "chip_col", "cluster", "source_item", "source_collection", "datetime", "bbox"):
            assert table.column(name).equals(expected.column(name)), name
        assert all(a.equals_exact(b, 1e-9)
                   for a, b in zip(frame.geometry, gpd.read_parquet(expected_path).geometry, strict=True))
