"""Exports (issue 19): a NeuCo-Bench CSV, and one joint GeoParquet of chips from two UTM zones.

The CSVs are read back the way NeuCo-Bench reads them: ``neuco_load`` below is its loader's parsing
(``load_submission``, embed2scale/NeuCo-Bench@a89ba063cca71aab7d86660081f0bf02e41fdd12,
``benchmark/data/embeddings.py``), less the annotations and torch. The joint table is read by
pyarrow, geopandas, DuckDB and GDAL; expected vectors and footprints come from the item files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import conftest
import duckdb
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import make_catalog, make_item
from pyproj import CRS, Transformer
from test_interop import gdal_environment

from stacembed import RunConfig, run
from stacembed.embeddings import EmbeddingCatalog, open_embeddings, read_geoparquet
from stacembed.errors import ConfigError, OutputError, ReadError
from stacembed.exports import METADATA_KEY, export_joint, export_neuco, hilbert_index

DIMS = 96  # the demo card's embedding size
CHIPS = 6  # 64 x 96 px items in 32 px chips: 2 x 3


# --- two small runs, one per UTM zone ------------------------------------------------------------

def source_catalog(root: Path, epsg: int, easting: float, collection: str) -> Path:
    """Two items side by side in ``epsg`` (a zone-aware copy of conftest's helpers)."""
    with mock.patch.object(conftest, "EPSG", epsg):
        items = [make_item(root, f"{collection}-{i}", dialect="1.1", origin=(easting + i * 3000.0, 5340000.0),
                           shape=(64, 96), seed=i + 1 + (epsg % 10), collection=collection) for i in range(2)]
        return make_catalog(root, items, collection=collection)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """z32: EPSG:32632 at 11.6 E, float32 GeoParquet and COG; z33: EPSG:32633 at 12.4 E (across the
    zone boundary from it), int8 COG only; f16: the z32 source again, float16 GeoParquet only."""
    base = tmp_path_factory.mktemp("exports")
    z32 = source_catalog(base / "src32", 32632, 690000.0, "zone32")
    z33 = source_catalog(base / "src33", 32633, 310000.0, "zone33")
    outs = {"z32": base / "z32", "z33": base / "z33", "f16": base / "f16"}
    run(RunConfig(out=outs["z32"], catalog=str(z32), chip_size=32, progress=False))
    run(RunConfig(out=outs["z33"], catalog=str(z33), chip_size=32, dtype="int8", formats=("geotiff",),
                  progress=False))
    run(RunConfig(out=outs["f16"], catalog=str(z32), chip_size=32, dtype="float16", formats=("geoparquet",),
                  progress=False))
    return outs


def chip_files(out: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(out.glob("*/*/*.parquet"))}


def chips_by_id(outs: list[Path]) -> dict[str, tuple[np.ndarray, dict]]:
    """Every chip's float32 vector and columns, by id, from the items themselves."""
    found = {}
    for out in outs:
        for item in open_embeddings(out):
            for batch, vectors in item.iter_chips():
                for row, vector in zip(batch.to_pylist(), vectors, strict=True):
                    found[row["id"]] = (vector, {**row, "item": item.id, "collection": item.collection_id})
    return found


# --- NeuCo-Bench's loader, as it parses -----------------------------------------------------------

def neuco_load(path: Path, expected_dim: int | None = None) -> tuple[list[str], np.ndarray]:
    """NeuCo-Bench's ``load_submission`` parsing (without the id filter and standardisation)."""
    df = pd.read_csv(path)
    if "id" not in df.columns:
        raise ValueError("Submission file must contain column 'id'.")
    df["id"] = df["id"].astype(str).str.replace(".zarr.zip", "", regex=False).str.replace(".zarr", "", regex=False)
    df = df.set_index("id")
    digit_cols = [c for c in df.columns if str(c).isdigit()]
    emb_cols = sorted(digit_cols, key=lambda s: int(s)) if digit_cols else list(df.columns)
    found_dim = len(emb_cols)
    expected_dim = found_dim if expected_dim is None else expected_dim
    if found_dim > expected_dim:
        raise ValueError(f"Embedding dimension mismatch. Expected {expected_dim}, got {found_dim}")
    array = df[emb_cols].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy(dtype=np.float32)
    if found_dim < expected_dim:
        array = np.pad(array, ((0, 0), (0, expected_dim - found_dim)), mode="constant")
    return list(df.index), array


def item_vectors(out: Path) -> dict[str, np.ndarray]:
    """(chips, D) float32 per item, read with pyarrow from the item files."""
    found = {}
    for stem, path in chip_files(out).items():
        column = pq.read_table(path, columns=["embedding"]).column("embedding")
        found[stem] = pc.list_flatten(column).to_numpy().reshape(-1, DIMS)
    return found


def test_sample_mode_writes_one_mean_vector_per_source_item_as_neuco_bench_reads_it(runs, tmp_path):
    out = tmp_path / "sub" / "embeddings.csv"
    export = export_neuco(runs["z32"], out)
    assert (export.rows, export.dimensions, export.source_dimensions, export.nan_filled) == (2, DIMS, DIMS, 0)
    assert out.read_text().splitlines()[0] == ",".join(["id", *map(str, range(DIMS))])
    ids, vectors = neuco_load(out, expected_dim=DIMS)
    expected = item_vectors(runs["z32"])
    assert ids == sorted(expected) == ["zone32-0", "zone32-1"]
    for sample, vector in zip(ids, vectors, strict=True):
        assert len(expected[sample]) == CHIPS
        np.testing.assert_allclose(vector, expected[sample].mean(axis=0), rtol=1e-6, atol=1e-6)
    # the challenge's own checks (generate_embeddings/data/submission_utils.py: test_submission)
    frame = pd.read_csv(out, header=0).set_index("id")
    assert frame.shape[1] == DIMS and not frame.isna().any().any()
    # the embedding item as the sample: the same here (one source item per embedding item)
    same = export_neuco(runs["z32"], tmp_path / "by-item.csv", sample_id="item")
    assert same.rows == 2 and (tmp_path / "by-item.csv").read_text() == out.read_text()


def test_sample_id_may_be_any_chip_column(runs, tmp_path):
    out = tmp_path / "rows.csv"
    assert export_neuco(runs["z32"], out, sample_id="chip_row").rows == 2
    ids, vectors = neuco_load(out)
    paths = chip_files(runs["z32"]).values()
    table = pa.concat_tables(pq.read_table(p, columns=["chip_row", "embedding"]) for p in paths)
    rows = table.column("chip_row").to_numpy()
    all_vectors = pc.list_flatten(table.column("embedding")).to_numpy().reshape(-1, DIMS)
    assert ids == ["0", "1"]
    for sample, vector in zip(ids, vectors, strict=True):
        np.testing.assert_allclose(vector, all_vectors[rows == int(sample)].mean(axis=0), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="sample_id 'nope'"):
        export_neuco(runs["z32"], tmp_path / "x.csv", sample_id="nope")
    assert not (tmp_path / "x.csv").exists()


def test_chip_mode_writes_every_chip_zero_padded_to_dim(runs, tmp_path):
    out = tmp_path / "chips.csv"
    export = export_neuco(runs["z32"], out, mode="chip", dim=DIMS + 4)
    assert (export.rows, export.dimensions) == (2 * CHIPS, DIMS + 4)
    ids, vectors = neuco_load(out, expected_dim=DIMS + 4)
    expected = {}
    for path in chip_files(runs["z32"]).values():
        table = pq.read_table(path, columns=["id", "embedding"])
        flat = pc.list_flatten(table.column("embedding")).to_numpy().reshape(-1, DIMS)
        expected.update(zip(table.column("id").to_pylist(), flat, strict=True))
    assert sorted(ids) == sorted(expected) and len(ids) == 2 * CHIPS
    for chip, vector in zip(ids, vectors, strict=True):
        np.testing.assert_array_equal(vector[:DIMS], expected[chip])  # float32 text round-trips exactly
        assert not vector[DIMS:].any()
    # NeuCo-Bench refuses embeddings longer than its embedding_dim; so do we, and write nothing
    with pytest.raises(ValueError, match="dimension mismatch"):
        neuco_load(out, expected_dim=DIMS)
    with pytest.raises(ConfigError, match="does not truncate"):
        export_neuco(runs["z32"], tmp_path / "short.csv", dim=DIMS - 1)
    with pytest.raises(ConfigError, match="sample_id applies"):
        export_neuco(runs["z32"], tmp_path / "short.csv", mode="chip", sample_id="item")
    with pytest.raises(ConfigError, match="unknown NeuCo-Bench export mode"):
        export_neuco(runs["z32"], tmp_path / "short.csv", mode="pixel")
    assert not (tmp_path / "short.csv").exists()


def test_a_sample_that_comes_back_after_others_is_still_one_row(runs, tmp_path, caplog):
    """Two copies of a run: each item's sample comes back after the other's row was written."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["z32"], copy)
    out = tmp_path / "twice.csv"
    with caplog.at_level("INFO", logger="stacembed"):
        export = export_neuco([runs["z32"], copy], out, sample_id="item")
    assert "'zone32-0' comes back" in caplog.text  # written, then met again: pooled again, all held
    ids, vectors = neuco_load(out)
    assert export.rows == 2 and ids == ["zone32-0", "zone32-1"]
    once_ids, once = neuco_load(export_neuco(runs["z32"], tmp_path / "once.csv", sample_id="item").path)
    assert once_ids == ids
    np.testing.assert_allclose(vectors, once, rtol=1e-6)
    with pytest.raises(ReadError, match="occurs twice"):  # chip ids must be unique: nothing written
        export_neuco([runs["z32"], copy], tmp_path / "chips.csv", mode="chip")
    assert not (tmp_path / "chips.csv").exists()


def test_nan_is_written_as_zero_and_left_out_of_the_means(runs, tmp_path):
    copy = tmp_path / "nan"
    shutil.copytree(runs["z32"], copy)
    path = chip_files(copy)["zone32-0"]
    table = pq.read_table(path)
    values = pc.list_flatten(table.column("embedding")).to_numpy().reshape(-1, DIMS).copy()
    clean = values.copy()
    values[0, 0] = np.nan  # one chip's first value
    values[:, 1] = np.nan  # the second value of every chip
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), DIMS)
    pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", column), path)

    out = tmp_path / "samples.csv"
    assert export_neuco(copy, out).nan_filled == 1  # the second value of zone32-0's mean
    ids, vectors = neuco_load(out)
    mean = dict(zip(ids, vectors, strict=True))["zone32-0"]
    assert mean[0] == pytest.approx(clean[1:, 0].mean(), rel=1e-6)  # the mean of the other chips
    assert mean[1] == 0.0
    np.testing.assert_allclose(mean[2:], clean[:, 2:].mean(axis=0), rtol=1e-6, atol=1e-6)
    assert "nan" not in out.read_text().lower()

    chips = tmp_path / "chips.csv"
    assert export_neuco(copy, chips, mode="chip").nan_filled == 1 + CHIPS
    frame = pd.read_csv(chips).set_index("id")
    assert not frame.isna().any().any() and (frame.loc[frame.index.str.startswith("zone32-0"), "1"] == 0).all()


def test_a_failed_export_leaves_no_file_and_the_old_one_as_it_was(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["z32"], broken)
    chip_files(broken)["zone32-1"].unlink()
    out = tmp_path / "exports" / "embeddings.csv"
    out.parent.mkdir()
    out.write_text("old\n")
    for mode in ("sample", "chip"):
        with pytest.raises(ReadError, match="zone32-1"):
            export_neuco(broken, out, mode=mode)
    table = tmp_path / "exports" / "all.parquet"
    with pytest.raises(ReadError, match="zone32-1"):
        export_joint(broken, table)
    with pytest.raises(ReadError, match="zone32-1"):
        export_joint(broken, tmp_path / "exports" / "parts", partition_by="utm_zone")
    assert out.read_text() == "old\n"
    assert [p.name for p in out.parent.iterdir()] == ["embeddings.csv"]  # no temporary, no spool


# --- the Hilbert curve ----------------------------------------------------------------------------

def xy2d(n: int, x: int, y: int) -> int:
    """Wikipedia's "Hilbert curve" xy2d, one point at a time."""
    d, s = 0, n // 2
    while s > 0:
        rx, ry = int(x & s > 0), int(y & s > 0)
        d += s * s * ((3 * rx) ^ ry)
        if ry == 0:
            if rx == 1:
                x, y = n - 1 - x, n - 1 - y
            x, y = y, x
        s //= 2
    return d


def reference_key(lon: float, lat: float) -> int:
    n = 1 << 32
    x = min(max(math.floor((lon + 180.0) / 360.0 * n), 0), n - 1)
    y = min(max(math.floor((lat + 90.0) / 180.0 * n), 0), n - 1)
    return xy2d(n, x, y)


def test_hilbert_index_visits_every_cell_once_stepping_to_a_neighbour():
    bits, n = 4, 16
    x, y = np.meshgrid(np.arange(n), np.arange(n))
    lon, lat = (x.ravel() + 0.5) / n * 360 - 180, (y.ravel() + 0.5) / n * 180 - 90
    keys = hilbert_index(lon, lat, bits=bits)
    assert sorted(keys.tolist()) == list(range(n * n))
    path = np.argsort(keys)
    steps = np.abs(np.diff(x.ravel()[path])) + np.abs(np.diff(y.ravel()[path]))
    assert (steps == 1).all()
    assert keys.tolist() == [xy2d(n, int(a), int(b)) for a, b in zip(x.ravel(), y.ravel(), strict=True)]
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-180, 180, 200), rng.uniform(-90, 90, 200)
    lon[:2], lat[:2] = (-180.0, 180.0), (-90.0, 90.0)
    assert hilbert_index(lon, lat).tolist() == [reference_key(a, b) for a, b in zip(lon, lat, strict=True)]
    assert hilbert_index([np.nan], [0.0]).tolist() == [2**64 - 1]  # no position: last


# --- one joint table ------------------------------------------------------------------------------

def test_the_joint_table_holds_every_chip_of_both_zones_with_its_native_georeferencing(runs, tmp_path):
    out = tmp_path / "all.parquet"
    with mock.patch("stacembed.exports.SPOOL_CACHE", 1):  # spool files closed and opened again
        export = export_joint([runs["z32"], runs["z33"]], out, row_group_rows=5)
    expected = chips_by_id([runs["z32"], runs["z33"]])
    assert export.rows == len(expected) == 4 * CHIPS and export.files == 1
    assert export.native_crs == ("EPSG:32632", "EPSG:32633") and export.data_type == "float32"
    reader = pq.ParquetFile(out)
    assert reader.metadata.num_row_groups == math.ceil(4 * CHIPS / 5)
    table, vectors = read_geoparquet(out)  # the reading API finds the vectors: float32, no quantization
    assert table.column("embedding").type == pa.list_(pa.float32(), DIMS)
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(expected)

    zones = {"zone32": "EPSG:32632", "zone33": "EPSG:32633"}
    for row, vector in zip(rows, vectors, strict=True):
        want, columns = expected[row["id"]]
        np.testing.assert_array_equal(vector, want)  # int8 items: dequantized as the reading API does
        assert row["item"] == columns["item"] and row["collection"] == columns["collection"]
        assert row["native_crs"] == zones[row["source_collection"]]
        assert row["native_geometry"] == columns["native_geometry"] and row["geometry"] == columns["geometry"]
        native = shapely.from_wkb(row["native_geometry"])
        assert native.bounds == pytest.approx((row["native_xmin"], row["native_ymin"], row["native_xmax"],
                                               row["native_ymax"]))
        # the native footprint, reprojected from its own CRS, is the CRS84 footprint
        to_crs84 = Transformer.from_crs(CRS.from_user_input(row["native_crs"]), "OGC:CRS84", always_xy=True)
        dense = shapely.segmentize(native, (row["native_xmax"] - row["native_xmin"]) / 8)
        moved = shapely.transform(dense, lambda xy, t=to_crs84: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
        assert shapely.hausdorff_distance(moved, shapely.from_wkb(row["geometry"])) < 1e-7
        box = row["bbox"]
        assert shapely.from_wkb(row["geometry"]).bounds == pytest.approx(
            (box["xmin"], box["ymin"], box["xmax"], box["ymax"]))
    assert {r["valid_fraction"] is None for r in rows} == {True, False}  # the COG-only items record none

    # rows along the curve: keys of the bbox centres, computed point by point, never decrease
    keys = [reference_key((r["bbox"]["xmin"] + r["bbox"]["xmax"]) / 2, (r["bbox"]["ymin"] + r["bbox"]["ymax"]) / 2)
            for r in rows]
    assert keys == sorted(keys)

    described = json.loads(reader.schema_arrow.metadata[METADATA_KEY])
    assert described["emb:type"] == "chip" and described["emb:dimensions"] == DIMS
    assert described["data_type"] == "float32" and described["source_data_types"] == ["float32", "int8"]
    assert described["emb:chip_layout"]["chip_size"] == [32, 32]
    assert described["model"]["mlm:name"] == "stacembed-demo-landsat" and described["model"]["weights_sha256"]
    assert described["native_crs"] == ["EPSG:32632", "EPSG:32633"]
    assert described["order"]["curve"] == "hilbert"
    assert json.loads(reader.metadata.metadata[METADATA_KEY]) == described
    geo = json.loads(reader.metadata.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert CRS.from_json_dict(geo["columns"]["geometry"]["crs"]) == CRS.from_user_input("OGC:CRS84")
    assert "native_geometry" not in geo["columns"]  # two native CRSs: plain WKB, CRS in native_crs
    west, south, east, north = geo["columns"]["geometry"]["bbox"]
    assert west < 12.0 < east and 40 < south < north < 50  # both sides of the 12 E zone boundary


def test_geopandas_duckdb_and_gdal_read_the_joint_table(runs, tmp_path):
    out = tmp_path / "all.parquet"
    export_joint([runs["z32"], runs["z33"]], out)
    frame = gpd.read_parquet(out)
    assert len(frame) == 4 * CHIPS and frame.crs == CRS.from_user_input("OGC:CRS84")
    assert frame.geometry.is_valid.all()
    assert len(gpd.read_parquet(out, bbox=(11.0, 40.0, 12.0, 50.0))) == 2 * CHIPS  # zone 32's chips
    counts = duckdb.sql(f"SELECT native_crs, count(*) FROM '{out}' GROUP BY 1 ORDER BY 1").fetchall()
    assert counts == [("EPSG:32632", 2 * CHIPS), ("EPSG:32633", 2 * CHIPS)]
    ranked = duckdb.sql(
        f"SELECT id, array_cosine_similarity(embedding::FLOAT[{DIMS}], (SELECT embedding::FLOAT[{DIMS}] "
        f"FROM '{out}' ORDER BY id LIMIT 1)) AS s FROM '{out}' ORDER BY s DESC").fetchall()
    assert len(ranked) == 4 * CHIPS and ranked[0][1] == pytest.approx(1.0, abs=1e-6)
    done = subprocess.run([sys.executable, "-c", GDAL_READ, str(out)], env=gdal_environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [4 * CHIPS, 4 * CHIPS, 0]


GDAL_READ = """
import json, sys, pyogrio
frame = pyogrio.read_dataframe(sys.argv[1], use_arrow=True)
print(json.dumps([len(frame), pyogrio.read_info(sys.argv[1])["features"], frame.geometry.isna().sum().item()]))
"""


def test_a_partitioned_joint_table_is_a_hive_dataset_sorted_in_each_file(runs, tmp_path):
    out = tmp_path / "parts"
    export = export_joint([runs["z32"], runs["z33"]], out, partition_by=("collection", "date", "utm_zone"))
    files = sorted(out.rglob("*.parquet"))
    assert export.files == len(files) == 4  # two dates per zone: the items' datetimes differ
    for path in files:
        parts = dict(part.split("=") for part in path.relative_to(out).parts[:-1])
        assert set(parts) == {"collection", "date", "utm_zone"}
        table = pq.read_table(path)
        assert "collection" not in table.column_names  # in the path, as hive has it
        crs = {"32N": "EPSG:32632", "33N": "EPSG:32633"}[parts["utm_zone"]]
        assert set(table.column("native_crs").to_pylist()) == {crs}
        assert {d.date().isoformat() for d in table.column("datetime").to_pylist()} == {parts["date"]}
        boxes = table.column("bbox").to_pylist()
        keys = [reference_key((b["xmin"] + b["xmax"]) / 2, (b["ymin"] + b["ymax"]) / 2) for b in boxes]
        assert keys == sorted(keys)
        assert METADATA_KEY in pq.read_schema(path).metadata
    dataset = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert dataset.num_rows == 4 * CHIPS
    assert sorted(set(dataset.column("utm_zone").to_pylist())) == ["32N", "33N"]
    counts = duckdb.sql(f"SELECT utm_zone, count(*) FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true) "
                        "GROUP BY 1 ORDER BY 1").fetchall()
    assert counts == [("32N", 2 * CHIPS), ("33N", 2 * CHIPS)]
    frame = gpd.read_parquet(out)
    assert len(frame) == 4 * CHIPS and frame.crs == CRS.from_user_input("OGC:CRS84")
    with pytest.raises(OutputError, match="exists"):
        export_joint(runs["z32"], out, partition_by="utm_zone")
    with pytest.raises(ConfigError, match="partition_by"):
        export_joint(runs["z32"], tmp_path / "other", partition_by=("zone",))


def test_float16_stays_float16_and_one_native_crs_is_declared(runs, tmp_path):
    out = tmp_path / "f16.parquet"
    export = export_joint(runs["f16"], out)
    assert export.data_type == "float16" and export.native_crs == ("EPSG:32632",)
    table = pq.read_table(out)
    assert table.column("embedding").type == pa.list_(pa.float16(), DIMS)
    stored = {}
    for path in chip_files(runs["f16"]).values():
        part = pq.read_table(path, columns=["id", "embedding"])
        flat = pc.list_flatten(part.column("embedding")).to_numpy().reshape(-1, DIMS)
        stored.update(zip(part.column("id").to_pylist(), flat, strict=True))
    flat = pc.list_flatten(table.column("embedding")).to_numpy().reshape(-1, DIMS)
    for chip, vector in zip(table.column("id").to_pylist(), flat, strict=True):
        np.testing.assert_array_equal(vector, stored[chip])
    geo = json.loads(pq.ParquetFile(out).metadata.metadata[b"geo"])
    assert CRS.from_json_dict(geo["columns"]["native_geometry"]["crs"]).to_epsg() == 32632
    frame = gpd.read_parquet(out)
    assert frame["native_geometry"].crs.to_epsg() == 32632
    assert json.loads(pq.read_schema(out).metadata[METADATA_KEY])["data_type"] == "float16"


def test_items_of_different_models_or_sizes_are_refused(runs, tmp_path):
    (item, *rest) = open_embeddings(runs["z32"]).items
    other = item.stac_item.clone()
    other.properties["emb:runtime_parameters"] = {**other.properties["emb:runtime_parameters"],
                                                  "mlm:name": "another-model"}
    mixed = EmbeddingCatalog("mixed", (dataclasses.replace(item, stac_item=other), *rest))
    for export in (export_joint, export_neuco):
        with pytest.raises(ConfigError, match="different models"):
            export(mixed, tmp_path / "x")
    wider = EmbeddingCatalog("wider", (dataclasses.replace(item, dimensions=DIMS + 1), *rest))
    with pytest.raises(ConfigError, match="different sizes"):
        export_joint(wider, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_export_commands_write_what_the_api_writes_and_refuse_in_one_line(runs, tmp_path, cli):
    out = runs["z32"]
    done = cli("export", "neuco", out, "-o", tmp_path / "cli.csv", "--mode", "chip")
    assert done.exit_code == 0, done.output
    api = export_neuco(out, tmp_path / "api.csv", mode="chip")
    assert (tmp_path / "cli.csv").read_bytes() == (tmp_path / "api.csv").read_bytes()
    assert f"{api.rows} chip row(s)" in done.output
    done = cli("export", "joint", out, "-o", tmp_path / "all.parquet", "--partition-by", "date")
    assert done.exit_code == 0, done.output and (tmp_path / "all.parquet").is_dir()
    refused = cli("export", "neuco", out, "-o", tmp_path / "short.csv", "--dim", "2")
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "short.csv").exists()
