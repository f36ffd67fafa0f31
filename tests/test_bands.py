import math

import pystac
import pytest

from stacembed.bands import match_bands
from stacembed.errors import BandError

from conftest import make_item


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
