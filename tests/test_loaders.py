"""`--loader odc`, `stackstac` and the default `auto` (direct reads) give the same embeddings, through the CLI.

(test_stack.py checks the stacked pixels of both loaders on the native grid; this checks the
whole run, in both STAC dialects, with scale/offset and nodata, and the resampled path.)
"""

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio


def run_outputs(cli, catalog, out, *extra):
    result = cli("run", "--catalog", catalog, "--out", out, "--chip-size", "32", "--stride", "24",
                 "--min-valid", "0.3", "-q", *extra)
    assert result.exit_code == 0, result.output
    embeddings, cogs = {}, {}
    for path in sorted(out.glob("*/*/*.parquet")):
        table = pq.read_table(path).to_pandas().sort_values(["chip_row", "chip_col"])
        embeddings[path.stem] = (table[["chip_row", "chip_col"]].to_numpy(), np.stack(table.embedding.to_numpy()))
    for path in sorted(out.glob("*/*/*.tif")):
        with rasterio.open(path) as cog:
            cogs[path.stem] = (cog.transform, cog.crs, cog.read())
    return embeddings, cogs


@pytest.mark.parametrize("dialect", ["1.0", "1.1"])
@pytest.mark.parametrize("resample", [(), ("--resolution", "60", "--resampling", "average")],
                         ids=["native", "resampled"])
@pytest.mark.parametrize("other", ["odc", "auto"])
def test_loaders_embed_alike(synthetic_catalog, cli, tmp_path, dialect, resample, other):
    """stackstac against odc-stac, and against ``auto`` (direct window reads on the native grid)."""
    catalog = synthetic_catalog(dialect, n_items=1, shape=(70, 90), scale=0.5, offset=-100.0,
                                nodata=0, nodata_rows=10)
    stackstac_emb, stackstac_cog = run_outputs(cli, catalog, tmp_path / "stackstac", "--loader", "stackstac", *resample)
    odc_emb, odc_cog = run_outputs(cli, catalog, tmp_path / other, "--loader", other, *resample)
    assert sorted(stackstac_emb) == sorted(odc_emb) == ["item-0"]
    for name in stackstac_emb:
        (chips_a, a), (chips_b, b) = stackstac_emb[name], odc_emb[name]
        assert len(a) >= (1 if resample else 9)
        np.testing.assert_array_equal(chips_a, chips_b)
        # The same file pixels (or exact 2x2 means of them at 60 m): the same numbers.
        np.testing.assert_array_equal(a, b)
        (transform_a, crs_a, cog_a), (transform_b, crs_b, cog_b) = stackstac_cog[name], odc_cog[name]
        assert (transform_a, crs_a) == (transform_b, crs_b)
        np.testing.assert_array_equal(cog_a, cog_b)
