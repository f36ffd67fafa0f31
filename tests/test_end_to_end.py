"""End to end through the CLI: the bundled sample and synthetic catalogs in both STAC dialects."""

import json
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import stac_geoparquet.arrow
from conftest import SAMPLE
from stac_validation import validate_tree


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The README's main job: `stacembed run --out out/` with no catalog flags."""
    from click.testing import CliRunner

    from stacembed.cli import main

    out = tmp_path_factory.mktemp("sample") / "out"
    result = CliRunner().invoke(main, ["run", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_sample_run_writes_a_valid_self_contained_catalog(sample_run):
    errors = validate_tree(sample_run)
    assert len(errors) == 7  # catalog, collection, model card, 4 items
    assert not {p: e for p, e in errors.items() if e}
    catalog = pystac.Catalog.from_file(str(sample_run / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert sorted(i.id for i in items) == [f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)]
    for path in sample_run.rglob("*.json"):
        text = path.read_text()
        assert str(sample_run) not in text, f"{path} has an absolute href into the output"


def test_output_items_keep_source_metadata_and_provenance(sample_run):
    source_items = {i.id: i for i in pystac.Catalog.from_file(str(SAMPLE)).get_items(recursive=True)}
    for item_file in sample_run.glob("*/L7-*/L7-*.json"):
        item = json.loads(item_file.read_text())
        source = source_items[item["id"]]
        assert item["geometry"] == json.loads(json.dumps(source.geometry))
        props = item["properties"]
        assert props["start_datetime"] == source.properties["start_datetime"]
        assert props["platform"] == "landsat-7" and props["instruments"] == ["etm+"]
        assert set(props["processing:software"]) == {"stacembed", "torch", "timm"}
        params = props["emb:runtime_parameters"]
        assert params["mlm:name"] == "stacembed-demo-landsat" and params["mlm:pretrained"] is False
        assert (params["chip_size"], params["stride"]) == (64, 64)
        links = {link["rel"]: link["href"] for link in item["links"]}
        derived = item_file.parent / links["derived_from"]
        assert derived.is_file() and json.loads(derived.read_text())["id"] == item["id"]
        card = json.loads((item_file.parent / links["emb:model"]).read_text())
        assert card["properties"]["mlm:name"] == "stacembed-demo-landsat"
        assets = item["assets"]
        assert assets["embeddings"]["type"] == "application/vnd.apache.parquet"
        assert assets["embeddings-geotiff"]["type"].startswith("image/tiff; application=geotiff")
        for asset in assets.values():
            path = item_file.parent / asset["href"]
            assert asset["file:size"] == path.stat().st_size
            import hashlib

            assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_geotiff_is_georeferenced_on_the_chip_grid(sample_run):
    for item_file in sample_run.glob("*/L7-*/L7-*.json"):
        item = json.loads(item_file.read_text())
        derived = next(link["href"] for link in item["links"] if link["rel"] == "derived_from")
        source = pystac.Item.from_file(str(item_file.parent / derived))
        with rasterio.open(source.assets["red"].get_absolute_href()) as src:
            src_transform, src_crs, shape = src.transform, src.crs, (src.height, src.width)
        asset = item["assets"]["embeddings-geotiff"]
        with rasterio.open(item_file.parent / asset["href"]) as cog:
            assert cog.crs == src_crs and asset["proj:code"] == "EPSG:31985"
            t = cog.transform
            assert (t.a, t.e) == (src_transform.a * 64, src_transform.e * 64)
            assert (t.c, t.f) == (src_transform.c, src_transform.f)  # stride == chip: same origin
            assert (cog.height, cog.width) == tuple(-(-n // 64) for n in shape)
            assert list(asset["proj:shape"]) == [cog.height, cog.width]
            assert asset["proj:transform"] == list(t)[:6]
            assert cog.count == 96 and cog.dtypes[0] == "float32"
            assert cog.descriptions[0] == "embedding_0000"
            tags = cog.tags()
            assert tags["STAC_ITEM_ID"] == item["id"]
            assert json.loads(tags["STAC_PROPERTIES"])["platform"] == "landsat-7"
            assert cog.profile["tiled"] and cog.overviews(1) == []  # small: no overviews needed


def test_geoparquet_reads_in_geopandas_and_duckdb(sample_run):
    parquet = next(sample_run.glob("*/L7-olinda-r0c0/L7-olinda-r0c0.parquet"))
    table = gpd.read_parquet(parquet)
    assert table.crs.to_string() == "OGC:CRS84"
    native = gpd.read_parquet(parquet, columns=["native_geometry"])
    assert native.crs.to_epsg() == 31985
    with rasterio.open(next(SAMPLE.parent.glob("*/L7-olinda-r0c0/red.tif"))) as src:
        transform = src.transform
    for _, row in table.iterrows():
        minx, miny, maxx, maxy = native.loc[_, "native_geometry"].bounds
        assert (minx, maxy) == transform @ (row.col_off, row.row_off)
        assert (maxx, miny) == transform @ (row.col_off + 64, row.row_off + 64)
        assert (row.native_xmin, row.native_ymax) == (minx, maxy)
        assert row.geometry.contains(row.geometry.centroid)
    assert table.embedding.map(len).eq(96).all()
    assert {"platform", "instruments", "start_datetime", "source_item", "valid_fraction"} <= set(table.columns)
    count, dims = duckdb.sql(f"select count(*), max(len(embedding)) from '{parquet}'").fetchall()[0]
    assert (count, dims) == (len(table), 96)
    # embeddings are PLAIN encoded, without a dictionary: DuckDB reads the same values
    group = pq.ParquetFile(parquet).metadata.row_group(0)
    (column,) = [group.column(i) for i in range(group.num_columns)
                 if group.column(i).path_in_schema.startswith("embedding")]
    assert column.path_in_schema == "embedding.list.element" and "PLAIN" in column.encodings
    assert not column.has_dictionary_page
    ducked = duckdb.sql(f"select embedding from '{parquet}' order by chip_row, chip_col").fetchnumpy()["embedding"]
    ordered = table.sort_values(["chip_row", "chip_col"]).embedding
    np.testing.assert_array_equal(np.stack(ducked), np.stack(ordered.to_numpy()))
    meta = json.loads(pq.ParquetFile(parquet).metadata.metadata[b"geo"])
    assert len(meta["columns"]["geometry"]["bbox"]) == 4
    assert json.loads(pq.read_schema(parquet).metadata[b"geo"])["primary_column"] == "geometry"
    assert meta["version"] == "1.1.0" and meta["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def test_stac_geoparquet_mirror_of_the_items(sample_run):
    table = pq.read_table(next(sample_run.glob("*/items.parquet")))
    items = list(stac_geoparquet.arrow.stac_table_to_items(table))
    assert sorted(i["id"] for i in items) == [f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)]
    collection = json.loads(next(sample_run.glob("*/collection.json")).read_text())
    assert collection["assets"]["geoparquet-items"]["href"] == "./items.parquet"
    assert collection["emb:dimensions"] == 96 and collection["emb:type"] == "chip"
    assert collection["emb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [64, 64], "stride": [64, 64]}


@pytest.mark.parametrize("dialect", ["1.0", "1.1"])
def test_synthetic_catalogs_in_both_dialects(synthetic_catalog, cli, tmp_path, dialect):
    catalog = synthetic_catalog(dialect, n_items=2, shape=(70, 100), scale=0.0001, nodata=0, nodata_rows=5)
    out = tmp_path / "out"
    result = cli("run", "--catalog", catalog, "--collection", "synthetic", "--out", out,
                 "--chip-size", "32", "--format", "geotiff", "--format", "geoparquet", "-q")
    assert result.exit_code == 0, result.output
    assert not {p: e for p, e in validate_tree(out).items() if e}
    item = json.loads(next(out.glob("*/item-0/item-0.json")).read_text())
    assert item["assets"]["embeddings"]["href"] == "./item-0.tif"
    assert item["properties"]["eo:cloud_cover"] == 5.0
    assert not any(k.startswith("proj:") for k in item["properties"])


def test_dry_run_prints_the_plan_and_writes_nothing(cli, tmp_path):
    result = cli("run", "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 items, 36 chips" in result.output
    assert "L7-olinda-r0c0" in result.output
    assert not (tmp_path / "out").exists()


def test_yaml_config_file(cli, tmp_path):
    (tmp_path / "run.yaml").write_text(f"out: {tmp_path / 'out'}\nformats: [geoparquet]\nids: [L7-olinda-r1c1]\n")
    result = cli("run", "--config", tmp_path / "run.yaml", "-q")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").glob("*/L7-*")] == ["L7-olinda-r1c1"]
    assert not [p for p in (tmp_path / "out").glob("*/*/*.tif") if not p.name.endswith(".overview.tif")]


def test_version_and_help(cli):
    from stacembed import __version__

    assert __version__ in cli("--version").output
    for command in (["run"], ["models"], ["models", "list"], ["models", "describe"]):
        result = cli(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "Examples:" in cli("run", "--help").output
    assert "stacembed-demo-landsat" in cli("models", "list").output


def test_provenance_names_the_canonical_location_of_copied_sources(synthetic_catalog, cli, tmp_path):
    """A copy of an item or collection (a stage-in, a mirror) names its original with a
    ``canonical`` link; ``derived_from`` and ``emb:source-data`` point there, not at the copy,
    and items without one keep their own href."""
    catalog = synthetic_catalog("1.1", n_items=2, shape=(64, 64))
    original = "https://stac.example.com/collections/synthetic"
    for path, href in [(catalog.parent / "synthetic" / "item-0" / "item-0.json", f"{original}/items/item-0"),
                       (catalog.parent / "synthetic" / "collection.json", original)]:
        document = json.loads(path.read_text())
        document["links"].append({"rel": "canonical", "href": href, "type": "application/json"})
        path.write_text(json.dumps(document))
    result = cli("run", "--catalog", catalog, "--out", tmp_path / "out", "--chip-size", "32", "-q")
    assert result.exit_code == 0, result.output
    derived = {}
    for path in (tmp_path / "out").glob("*/item-*/item-*.json"):
        item = json.loads(path.read_text())
        derived[item["id"]] = [(path.parent, link["href"]) for link in item["links"] if link["rel"] == "derived_from"]
    assert [href for _, href in derived["item-0"]] == [f"{original}/items/item-0"]
    [(item_dir, href)] = derived["item-1"]  # a local source: relative to the item, no absolute path
    assert not Path(href).is_absolute()
    assert (item_dir / href).resolve() == (catalog.parent / "synthetic" / "item-1" / "item-1.json").resolve()
    collection = json.loads(next((tmp_path / "out").glob("*/collection.json")).read_text())
    assert [link["href"] for link in collection["links"] if link["rel"] == "emb:source-data"] == [original]
