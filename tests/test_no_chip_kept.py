"""When --min-valid skips every chip of an item, the run still succeeds with valid, empty outputs.

Chosen behaviour: an item without a single usable chip is not an error (a scene can be all
cloud-masked or all nodata), so the item is published as usual: a GeoParquet with 0 rows and
the same schema as any other, a COG of the chip grid that is all nodata (NaN), and a STAC item
that validates. A warning names the item and the best valid fraction it had.
"""

import json
import logging

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import rasterio
from conftest import EPSG
from stac_validation import validate_tree


def outputs(out, item_id="item-0"):
    folder = next(out.glob(f"*/{item_id}"))
    return folder / f"{item_id}.parquet", folder / f"{item_id}.tif", folder / f"{item_id}.json"


def assert_empty_but_valid(out, chip_rows, chip_cols):
    parquet, tif, item_file = outputs(out)
    table = gpd.read_parquet(parquet)
    assert len(table) == 0
    assert table.crs.to_string() == "OGC:CRS84" and table.native_geometry.crs.to_epsg() == EPSG
    assert pq.read_schema(parquet).field("embedding").type.list_size == 96
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchall() == [(0,)]
    with rasterio.open(tif) as cog:
        assert (cog.count, cog.height, cog.width) == (96, chip_rows, chip_cols)
        assert np.isnan(cog.nodata) and np.isnan(cog.read()).all()
    item = json.loads(item_file.read_text())
    assert {"embeddings", "embeddings-geotiff"} <= set(item["assets"])
    errors = validate_tree(out)
    assert not {path: e for path, e in errors.items() if e}


def test_item_that_is_nodata_everywhere_with_min_valid_1(synthetic_catalog, cli, tmp_path, caplog):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 50), nodata=0, nodata_rows=40)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="stacembed"):
        result = cli("run", "--catalog", catalog, "--out", out, "--chip-size", "16", "--min-valid", "1.0")
    assert result.exit_code == 0, result.output
    assert "1 item(s) embedded (0 chips)" in result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("item 'item-0': none of its 12 chips has enough valid pixels (--min-valid 1" in w
               and "the best has 0" in w for w in warnings), warnings
    assert_empty_but_valid(out, 3, 4)


def test_every_chip_below_the_default_min_valid(synthetic_catalog, cli, tmp_path, caplog):
    # 40 x 50 px in one 64 px chip: 2000 / 4096 = 0.49 of it has data, below the default 0.5.
    catalog = synthetic_catalog("1.0", n_items=1, shape=(40, 50))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="stacembed"):
        result = cli("run", "--catalog", catalog, "--out", out)
    assert result.exit_code == 0, result.output
    assert any("the best has 0.488" in r.getMessage() for r in caplog.records), caplog.text
    assert_empty_but_valid(out, 1, 1)

    # The empty file has exactly the schema of a file with rows: they can be read as one dataset.
    kept = tmp_path / "kept"
    assert cli("run", "--catalog", catalog, "--out", kept, "--min-valid", "0.4", "-q").exit_code == 0
    empty_parquet, full_parquet = outputs(out)[0], outputs(kept)[0]
    assert pq.read_schema(empty_parquet).remove_metadata() == pq.read_schema(full_parquet).remove_metadata()
    both = duckdb.sql(f"SELECT count(*) FROM read_parquet(['{empty_parquet}', '{full_parquet}'])").fetchall()
    assert both == [(1,)]
