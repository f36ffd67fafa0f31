"""What other tools see in the outputs (issue 15): a run's catalog opened by independent readers.

pystac (with an offline schema registry), stac-geoparquet (items.parquet back to STAC items),
geopandas, DuckDB and GDAL (through pyogrio) must each read every document and every row, and
the STAC must be what the Embeddings extension asks for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import geopandas as gpd
import pyarrow.parquet as pq
import pyogrio
import pystac
import pytest
import shapely
import stac_geoparquet.arrow
from click.testing import CliRunner
from conftest import SAMPLE
from stac_validation import validate, validate_tree

from stacembed.cli import main

SAMPLE_IDS = [f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)]
DIMENSIONS = 96  # the demo card's embedding size


def stacembed(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory) -> Path:
    """The README's job: the bundled sample, both formats, no --crs (null runtime parameters)."""
    out = tmp_path_factory.mktemp("interop") / "out"
    result = stacembed("run", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def collection_dir(out: Path) -> Path:
    (path,) = out.glob("*/collection.json")
    return path.parent


def item_files(out: Path) -> list[Path]:
    return sorted(collection_dir(out).glob("L7-*/L7-*.json"))


def is_local(href: str) -> bool:
    return urlparse(href).scheme in ("", "file")


# --- STAC: pystac, the offline validator, `stacembed validate` ----------------------------------

def test_pystac_validates_the_catalog_offline(sample_out):
    """pystac's own validator, its schemas taken from the package's bundle (no network), on the
    documents as written (STAC 1.0.0: pystac objects would be migrated to 1.1.0 first)."""
    from pystac.validation import JsonSchemaSTACValidator, set_validator, validate_all_dict

    from stacembed.validate import bundled_schemas

    validator = JsonSchemaSTACValidator()
    validator.schema_cache.update(bundled_schemas())
    set_validator(validator)
    try:
        catalog_file = sample_out / "catalog.json"
        validate_all_dict(json.loads(catalog_file.read_text()), str(catalog_file))
    finally:
        set_validator(JsonSchemaSTACValidator())
    catalog = pystac.Catalog.from_file(str(sample_out / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert sorted(i.id for i in items) == SAMPLE_IDS
    for item in items:
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_file()


def test_stacembed_validate_reports_one_line_per_invalid_document(sample_out, tmp_path):
    result = stacembed("validate", sample_out)
    assert result.exit_code == 0, result.output
    assert "7 STAC documents valid" in result.output  # catalog, collection, model card, 4 items
    broken = tmp_path / "broken.json"
    item = json.loads(item_files(sample_out)[0].read_text())
    del item["assets"]["embeddings"]
    broken.write_text(json.dumps(item))
    bad_collection = tmp_path / "collection.json"
    collection = json.loads((collection_dir(sample_out) / "collection.json").read_text())
    collection["emb:dimensions"] = "96"
    bad_collection.write_text(json.dumps(collection))
    result = stacembed("validate", broken, bad_collection, item_files(sample_out)[1])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 2, result.output
    assert lines[0].startswith(f"{broken}: ") and "embeddings" in lines[0]
    assert lines[1].startswith(f"{bad_collection}: ") and "emb:dimensions" in lines[1]


def test_the_validator_uses_the_schemas_in_the_package():
    import stac_validation

    from stacembed import validate as packaged

    assert stac_validation.validate is not None and packaged.SCHEMAS.is_dir()
    assert not (Path(stac_validation.__file__).parent / "schemas").exists()  # one copy: the package's
    assert (packaged.SCHEMAS / "stac-extensions.github.io/embeddings/v0.0.1/schema.json").is_file()


# --- what the Embeddings extension asks for ------------------------------------------------------

def test_collection_describes_its_items_assets_and_the_model_input_and_output(sample_out):
    collection = json.loads((collection_dir(sample_out) / "collection.json").read_text())
    assert validate(collection) == []
    embeddings = collection["item_assets"]["embeddings"]
    assert embeddings["type"] == "application/vnd.apache.parquet" and "embeddings" in embeddings["roles"]
    assert "image/tiff" in collection["item_assets"]["embeddings-geotiff"]["type"]
    assert any("item-assets" in url for url in collection["stac_extensions"])
    card = json.loads((SAMPLE.parents[2] / "stacembed/models/cards/stacembed-demo-landsat.json").read_text())
    assert collection["mlm:input"] == card["properties"]["mlm:input"][:1]
    assert collection["mlm:output"] == card["properties"]["mlm:output"][:1]
    assert collection["gsd"] == pytest.approx(28.5 * 64)  # one embedding per 64 px chip of 28.5 m pixels


def test_items_name_their_source_data_and_the_embedding_gsd(sample_out):
    for path in item_files(sample_out):
        item = json.loads(path.read_text())
        links = {link["rel"]: link for link in item["links"]}
        assert links["emb:source-data"]["href"] == links["derived_from"]["href"]
        # gsd is the embedding's ground sample distance (stride x pixel size), not the source's 28.5 m
        assert item["properties"]["gsd"] == pytest.approx(28.5 * 64)
        titles = {asset["title"] for asset in item["assets"].values()}
        assert all(title for title in titles)


def test_kept_source_fields_have_their_extension_declared(synthetic_catalog, tmp_path):
    for dialect, eo in (("1.0", "eo/v1.1.0"), ("1.1", "eo/v2.0.0")):
        catalog = synthetic_catalog(dialect, n_items=1, shape=(64, 64))
        out = tmp_path / dialect
        result = stacembed("run", "--catalog", catalog, "--out", out, "--chip-size", "32", "-q")
        assert result.exit_code == 0, result.output
        (path,) = out.glob("*/item-0/item-0.json")
        item = json.loads(path.read_text())
        assert item["properties"]["eo:cloud_cover"] == 5.0
        assert f"https://stac-extensions.github.io/{eo}/schema.json" in item["stac_extensions"]
        assert not any("projection/v1" in url or "raster" in url for url in item["stac_extensions"])
        assert not {p: e for p, e in validate_tree(out).items() if e}


def test_dense_embeddings_are_not_called_a_chip_grid(tmp_path):
    out = tmp_path / "out"
    result = stacembed("run", "--out", out, "--pooling", "none", "--format", "geotiff", "--ids", "L7-olinda-r0c0",
                       "-q")
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*/L7-olinda-r0c0/L7-olinda-r0c0.json")
    item = json.loads(path.read_text())
    title = item["assets"]["embeddings"]["title"]
    assert "chip grid" not in title and "patch" in title
    collection = json.loads(next(out.glob("*/collection.json")).read_text())
    assert "chip grid" not in collection["item_assets"]["embeddings"]["title"]
    assert not {p: e for p, e in validate_tree(out).items() if e}


# --- hrefs: relative where local, so the catalog survives a move ---------------------------------

def test_no_absolute_local_path_in_any_document(sample_out):
    for path in sample_out.rglob("*.json"):
        document = json.loads(path.read_text())
        hrefs = [link["href"] for link in document.get("links", [])]
        hrefs += [asset["href"] for asset in document.get("assets", {}).values()]
        for href in hrefs:
            if is_local(href):
                assert not Path(href).is_absolute(), f"{path.relative_to(sample_out)}: {href}"


def test_provenance_links_resolve_relative_to_their_document(sample_out):
    source_items = {i.id: i for i in pystac.Catalog.from_file(str(SAMPLE)).get_items(recursive=True)}
    for path in item_files(sample_out):
        item = json.loads(path.read_text())
        (derived,) = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
        target = (path.parent / derived).resolve()
        assert target == Path(source_items[item["id"]].get_self_href()).resolve()
    collection_file = collection_dir(sample_out) / "collection.json"
    collection = json.loads(collection_file.read_text())
    (source,) = [link["href"] for link in collection["links"] if link["rel"] == "emb:source-data"]
    assert (collection_file.parent / source).resolve() == (SAMPLE.parent / "landsat-etm-sample/collection.json")


def test_the_card_copy_links_local_weights_relatively_and_they_resolve(sample_out):
    card_file = next(collection_dir(sample_out).glob("model/*.json"))
    (weights,) = [a for a in json.loads(card_file.read_text())["assets"].values() if "mlm:model" in a["roles"]]
    assert not Path(weights["href"]).is_absolute()  # no directory of this machine in the catalog
    assert (card_file.parent / weights["href"]).resolve().name == "stacembed-demo-landsat.safetensors"
    assert (card_file.parent / weights["href"]).is_file()


def test_a_card_with_weights_inside_the_output_links_them_relatively(tmp_path):
    from stacembed.catalog import write_model_card
    from stacembed.layout import OutputLayout
    from stacembed.models import load_card

    out = tmp_path / "out"
    layout = OutputLayout(out, "c")
    weights = out / "weights" / "w.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    card_data = json.loads((SAMPLE.parents[2] / "stacembed/models/cards/stacembed-demo-landsat.json").read_text())
    card_data["assets"]["weights"]["href"] = str(weights)
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(card_data))
    write_model_card(layout, load_card(str(card_file)))
    copy = json.loads(layout.model_card_file("stacembed-demo-landsat").read_text())
    assert copy["assets"]["weights"]["href"] == "../../weights/w.safetensors"
    remote = "https://example.com/models/w.safetensors"
    card_data["assets"]["weights"]["href"] = remote
    card_file.write_text(json.dumps(card_data))
    write_model_card(layout, load_card(str(card_file)))
    assert json.loads(layout.model_card_file("stacembed-demo-landsat").read_text())["assets"]["weights"]["href"] \
        == remote


# --- the item GeoParquet files --------------------------------------------------------------------

def test_native_geometry_bbox_covers_every_chip(sample_out):
    """Edge chips extend past the raster; the ``geo`` bbox of each geometry column must cover them,
    or readers that skip files or row groups by bbox miss them."""
    overhanging = 0
    for path in collection_dir(sample_out).glob("L7-*/L7-*.parquet"):
        table = pq.read_table(path, columns=["geometry", "native_geometry"])
        geo = json.loads(pq.ParquetFile(path).metadata.metadata[b"geo"])  # the file's footer, as the spec says
        for column in ("geometry", "native_geometry"):
            bounds = shapely.bounds(shapely.from_wkb(table.column(column).to_pylist()))
            xmin, ymin, xmax, ymax = geo["columns"][column]["bbox"]
            assert xmin <= bounds[:, 0].min() and ymin <= bounds[:, 1].min()
            assert xmax >= bounds[:, 2].max() and ymax >= bounds[:, 3].max(), (path.name, column)
        native = shapely.bounds(shapely.from_wkb(table.column("native_geometry").to_pylist()))
        item = json.loads(path.with_suffix(".json").read_text())
        grid = item["assets"]["embeddings-geotiff"]
        overhanging += native[:, 1].min() < grid["proj:transform"][5] - 28.5 * 176  # below the raster
    assert overhanging  # the sample has edge chips past the raster: the check above means something


def test_geopandas_reads_every_row_and_filters_by_bbox(sample_out):
    for path in collection_dir(sample_out).glob("L7-*/L7-*.parquet"):
        rows = pq.ParquetFile(path).metadata.num_rows
        chips = gpd.read_parquet(path)
        assert len(chips) == rows and chips.crs.to_string() == "OGC:CRS84"
        assert len(gpd.read_parquet(path, bbox=tuple(chips.total_bounds))) == rows
    items = gpd.read_parquet(collection_dir(sample_out) / "items.parquet")
    assert sorted(items["id"]) == SAMPLE_IDS


def test_duckdb_reads_every_row_and_ranks_by_cosine_similarity(sample_out):
    path = next(collection_dir(sample_out).glob("L7-olinda-r0c0/*.parquet"))
    rows = pq.ParquetFile(path).metadata.num_rows
    ranked = duckdb.sql(
        f"SELECT id, array_cosine_similarity(embedding::FLOAT[{DIMENSIONS}], "
        f"(SELECT embedding::FLOAT[{DIMENSIONS}] FROM '{path}' ORDER BY id LIMIT 1)) AS similarity "
        f"FROM '{path}' ORDER BY similarity DESC"
    ).fetchall()
    assert len(ranked) == rows
    ((first_id,),) = duckdb.sql(f"SELECT min(id) FROM '{path}'").fetchall()
    assert ranked[0][0] == first_id and ranked[0][1] == pytest.approx(1.0, abs=1e-6)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for _, s in ranked)
    mirror = collection_dir(sample_out) / "items.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM '{mirror}'").fetchall() == [(4,)]


def test_a_null_source_property_is_a_typed_column():
    """A source property that is null becomes a string column of nulls, not Arrow's null type
    (with which GDAL reads no row of the file)."""
    import pyarrow as pa

    from stacembed.writers.geoparquet import _property_columns

    assert _property_columns({"view:sun_azimuth": None}) == {"view:sun_azimuth": (None, pa.string())}


def test_relative_hrefs_for_local_targets_only(tmp_path):
    from stacembed.catalog import relative_href

    document = tmp_path / "out" / "c" / "item" / "item.json"
    source = tmp_path / "src" / "a" / "a.json"
    assert relative_href(str(source), document) == "../../../src/a/a.json"
    assert relative_href(source.as_uri(), document) == "../../../src/a/a.json"
    assert relative_href(str(tmp_path / "out" / "c" / "item" / "x.tif"), document) == "./x.tif"
    for href in ("https://example.com/a.json", "s3://bucket/a.json", "./already/relative.json"):
        assert relative_href(href, document) == href


# --- items.parquet: the stac-geoparquet mirror ----------------------------------------------------

def test_items_parquet_round_trips_to_valid_stac_with_hrefs_relative_to_the_table(sample_out):
    mirror = collection_dir(sample_out) / "items.parquet"
    items = list(stac_geoparquet.arrow.stac_table_to_items(pq.read_table(mirror)))
    assert sorted(i["id"] for i in items) == SAMPLE_IDS
    for item in items:
        assert validate(item) == [], item["id"]
        for asset in item["assets"].values():
            assert (mirror.parent / asset["href"]).is_file(), asset["href"]
        for link in item["links"]:
            assert link.get("title", "") is not None  # no "title": null
            if is_local(link["href"]):
                assert (mirror.parent / link["href"]).is_file(), link
        written = json.loads((mirror.parent / item["id"] / f"{item['id']}.json").read_text())
        assert item["properties"]["emb:runtime_parameters"] == written["properties"]["emb:runtime_parameters"]


def test_items_parquet_carries_the_collection(sample_out):
    mirror = collection_dir(sample_out) / "items.parquet"
    metadata = json.loads(pq.read_schema(mirror).metadata[b"stac-geoparquet"])
    collection = json.loads((mirror.parent / "collection.json").read_text())
    assert metadata["collections"] == {collection["id"]: collection}
    assert validate(collection) == []


def test_items_parquet_has_no_null_typed_columns(sample_out):
    import pyarrow as pa

    def null_fields(fields, prefix=""):
        for field in fields:
            name = f"{prefix}{field.name}"
            if pa.types.is_null(field.type):
                yield name
            elif pa.types.is_struct(field.type):
                yield from null_fields(list(field.type), f"{name}.")
            elif pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
                yield from null_fields([field.type.value_field], f"{name}.")

    for path in [collection_dir(sample_out) / "items.parquet", *collection_dir(sample_out).glob("L7-*/L7-*.parquet")]:
        assert list(null_fields(pq.read_schema(path))) == [], path.name


# --- GDAL, through pyogrio ------------------------------------------------------------------------

GDAL_READ = """
import json, sys, pyogrio
counts = {}
for path in sys.argv[1:]:
    frame = pyogrio.read_dataframe(path, use_arrow=True)
    info = pyogrio.read_info(path)
    counts[path] = [len(frame), info["features"], frame.geometry.isna().sum().item()]
print(json.dumps(counts))
"""


def gdal_environment(tmp_path: Path) -> dict[str, str]:
    """An environment in which pyogrio's GDAL reads GeoParquet: with its Parquet driver, or with
    its ADBC driver over DuckDB (GDAL looks for ``libduckdb.so``; DuckDB's Python module holds the
    same C API, so a link of that name to it serves)."""
    drivers = pyogrio.list_drivers()
    env = dict(os.environ)
    if "Parquet" in drivers:
        return env
    spec = importlib.util.find_spec("_duckdb") or importlib.util.find_spec("duckdb.duckdb")
    if "ADBC" not in drivers or spec is None or not spec.origin:
        pytest.skip("pyogrio's GDAL has neither the Parquet driver nor ADBC with DuckDB")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libduckdb.so").symlink_to(spec.origin)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH")) if p)
    return env


def test_gdal_reads_every_row_of_the_item_geoparquet_and_items_parquet(sample_out, tmp_path):
    paths = [collection_dir(sample_out) / "items.parquet", *collection_dir(sample_out).glob("L7-*/L7-*.parquet")]
    done = subprocess.run([sys.executable, "-c", GDAL_READ, *map(str, paths)], env=gdal_environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout)
    for path in paths:
        rows = pq.ParquetFile(path).metadata.num_rows
        assert counts[str(path)] == [rows, rows, 0], path.name


# --- `models export` ------------------------------------------------------------------------------

def test_models_export_says_when_the_weights_are_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv("STACEMBED_OFFLINE", "1")
    for variable in ("STACEMBED_CACHE", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "cache" / variable))
    result = CliRunner().invoke(main, ["models", "export", "dinov2-vits14", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.json"]
    warnings = [line for line in result.output.splitlines() if "weights" in line]
    assert len(warnings) == 1 and "not written" in warnings[0] and "huggingface.co" in warnings[0]


def test_no_reader_sees_a_bbox_that_misses_chips_of_a_file_with_several_row_groups(tmp_path):
    """The ``geo`` metadata pyarrow/geopandas read from the schema must not hold the first row
    group's bbox: either no bbox or the footer's, which covers every chip."""
    from conftest import make_catalog, make_item

    from stacembed import RunConfig, run

    item = make_item(tmp_path / "src", "big", dialect="1.1", origin=(500000.0, 9100000.0), shape=(410, 410), seed=1)
    catalog = make_catalog(tmp_path / "src", [item])
    run(RunConfig(out=tmp_path / "out", catalog=str(catalog), weights="random", chip_size=8,
                  formats=("geoparquet",), progress=False))
    path = next((tmp_path / "out").glob("*/big/big.parquet"))
    assert pq.ParquetFile(path).num_row_groups > 1
    actual = gpd.read_parquet(path).total_bounds
    footer = json.loads(pq.ParquetFile(path).metadata.metadata[b"geo"])["columns"]["geometry"]["bbox"]
    assert footer[0] <= actual[0] and footer[1] <= actual[1] and footer[2] >= actual[2] and footer[3] >= actual[3]
    schema_geo = json.loads(pq.read_schema(path).metadata[b"geo"])["columns"]["geometry"]
    assert "bbox" not in schema_geo or schema_geo["bbox"] == footer
