import math

import pystac
import pytest
from conftest import make_item

from stacembed.bands import match_bands
from stacembed.errors import BandError


@pytest.mark.parametrize("dialect", ["1.0", "1.1"])
def test_bands_match_by_common_name_with_scale_offset_nodata(tmp_path, dialect):
    data = make_item(tmp_path, "a", dialect=dialect, origin=(500000.0, 9100000.0), shape=(8, 8), seed=1,
                     scale=0.0001, offset=-0.1, nodata=0)
    item = pystac.Item.from_dict(data)
    item.set_self_href(str(tmp_path / "a" / "a.json"))
    item.make_asset_hrefs_absolute()
    found = match_bands(item, ["red", "NIR", "B7"])
    assert [(b.asset_key, b.name) for b in found] == [("B3", "red"), ("B4", "NIR"), ("B7", "B7")]
    assert all(b.scale == 0.0001 and b.offset == -0.1 and b.nodata == 0 for b in found)
    assert found[0].href == str(tmp_path / "a" / "B3.tif")


def test_asset_key_wins_over_common_name():
    item = pystac.Item("x", None, None, __import__("datetime").datetime(2024, 1, 1), {})
    item.add_asset("nir", pystac.Asset("/nir.tif", roles=["data"]))
    item.add_asset("B8A", pystac.Asset("/b8a.tif", roles=["data"], extra_fields={
        "bands": [{"name": "B8A", "eo:common_name": "nir"}]}))
    item.add_asset("thumbnail", pystac.Asset("/t.png", roles=["thumbnail"]))
    assert match_bands(item, ["nir"])[0].asset_key == "nir"
    with pytest.raises(BandError, match="no band 'thumbnail'"):
        match_bands(item, ["thumbnail"])


def test_multiband_asset_and_string_nodata():
    item = pystac.Item("x", None, None, __import__("datetime").datetime(2024, 1, 1), {})
    item.add_asset("image", pystac.Asset("/rgb.tif", roles=["data"], extra_fields={
        "eo:bands": [{"name": "r", "common_name": "red"}, {"name": "g", "common_name": "green"}],
        "raster:bands": [{"nodata": "nan"}, {"nodata": "nan", "scale": 2}],
    }))
    green = match_bands(item, ["green"])[0]
    assert (green.asset_key, green.index, green.scale) == ("image", 2, 2.0)
    assert math.isnan(green.nodata)


def test_missing_band_names_what_is_there(tmp_path):
    item = pystac.Item.from_dict(make_item(tmp_path, "a", dialect="1.1", origin=(0.0, 0.0), shape=(4, 4), seed=1))
    with pytest.raises(BandError) as err:
        match_bands(item, ["red", "coastal", "rededge1"])
    message = str(err.value)
    assert "'coastal', 'rededge1'" in message and "b3" in message and "red" in message


# --- catalog presets' scale/offset for items that state none ---------------------------------------------

def _pc_sentinel2_item(baseline: str | None, stated_scale: float | None = None) -> pystac.Item:
    """A Planetary Computer-like Sentinel-2 L2A item: band assets without raster:bands."""
    properties = {"s2:processing_baseline": baseline} if baseline else {}
    item = pystac.Item("S2B_MSIL2A_x", None, None, __import__("datetime").datetime(2024, 7, 1), properties,
                       collection="sentinel-2-l2a")
    for key in ("B04", "B08", "SCL"):
        extra = {"raster:bands": [{"scale": stated_scale, "offset": 0}]} if stated_scale else {}
        item.add_asset(key, pystac.Asset(f"/{key}.tif", roles=["data"], extra_fields=extra))
    return item


def _rules(preset: str, collection: str):
    from stacembed.resolve import load_presets

    return load_presets()[preset].collections[collection].values


@pytest.mark.parametrize("baseline, offset", [("05.09", -0.1), ("04.00", -0.1), ("03.01", 0.0), (None, 0.0)])
def test_planetary_computer_sentinel2_gets_reflectance_by_processing_baseline(baseline, offset):
    item = _pc_sentinel2_item(baseline)
    red, nir, scl = match_bands(item, ["red", "nir", "scl"], {"red": "B04", "nir": "B08", "scl": "SCL"},
                                _rules("planetary-computer", "sentinel-2-l2a"))
    assert (red.scale, red.offset) == (nir.scale, nir.offset) == (0.0001, offset)
    assert (scl.scale, scl.offset) == (1.0, 0.0)  # a class layer is never scaled
    assert match_bands(item, ["B04"])[0].scale == 1.0  # no rules (not a preset search): values as stored


def test_what_an_item_states_wins_over_the_preset():
    item = _pc_sentinel2_item("05.09", stated_scale=0.0002)
    red = match_bands(item, ["B04"], {}, _rules("planetary-computer", "sentinel-2-l2a"))[0]
    assert (red.scale, red.offset, red.described) == (0.0002, 0.0, True)


def test_hls_thermal_and_mask_assets_get_their_own_rules():
    item = pystac.Item("HLS.L30.x", None, None, __import__("datetime").datetime(2024, 7, 1), {}, collection="hls2-l30")
    for key in ("B04", "B10", "Fmask"):
        item.add_asset(key, pystac.Asset(f"/{key}.tif", roles=["data"]))
    red, thermal, mask = match_bands(item, ["B04", "B10", "Fmask"], {}, _rules("planetary-computer", "hls2-l30"))
    assert (red.scale, thermal.scale, mask.scale) == (0.0001, 0.01, 1.0)


def test_preset_rules_reach_the_pixels(tmp_path):
    """A preset rule turns the stored integers into measurements when the chips are read."""
    import numpy as np
    import rasterio

    from stacembed.grid import read_grid
    from stacembed.readers import DirectReader
    from stacembed.resolve.presets import ValueRule

    data = make_item(tmp_path, "a", dialect="1.1", origin=(500000.0, 9100000.0), shape=(8, 8), seed=3)
    for asset in data["assets"].values():
        for band in asset["bands"]:
            del band["raster:scale"], band["raster:offset"]
    item = pystac.Item.from_dict(data)
    item.set_self_href(str(tmp_path / "a" / "a.json"))
    item.make_asset_hrefs_absolute()
    rule = ValueRule(("B3",), scale=0.0001, offset=-0.1)
    red = match_bands(item, ["red"], {}, [rule])[0]
    with rasterio.open(red.href) as ds:
        stored = ds.read(1).astype("float64")
    reader = DirectReader([(item, [red])], read_grid(red.href))
    try:
        got = reader.read(slice(0, 8), slice(0, 8))[0][0]
    finally:
        reader.close()
    np.testing.assert_allclose(got, (stored * 0.0001 - 0.1).astype("float32"), rtol=0, atol=1e-7)


def test_preset_value_rules_are_checked():
    from stacembed.errors import ConfigError
    from stacembed.resolve.presets import Preset

    base = {"api": "https://example.com/stac"}
    with pytest.raises(ConfigError, match="needs 'assets'"):
        Preset.from_mapping("p", {**base, "collections": {"c": {"values": [{"scale": 0.1}]}}})
    with pytest.raises(ConfigError, match="takes only assets, offset, scale, when"):
        Preset.from_mapping("p", {**base, "collections": {"c": {"values": [{"assets": ["B1"], "factor": 2}]}}})
    with pytest.raises(ConfigError, match="'when' takes exactly"):
        Preset.from_mapping("p", {**base, "collections": {"c": {"values": [{"assets": ["B1"], "when": {"x": 1}}]}}})
