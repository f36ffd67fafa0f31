"""The search question: filters evaluated on the client, access settings, presets, exports."""

from __future__ import annotations

import json
import os

import pystac
import pytest
from pystac_client.item_search import ItemSearch

from stacembed.access import Access, parse_headers, redact
from stacembed.config import RunConfig
from stacembed.errors import ConfigError
from stacembed.resolve import Search, load_presets
from stacembed.resolve.api import search_parameters
from stacembed.resolve.filters import (
    ItemFilter,
    apply,
    parse_filter,
    parse_intersects,
    parse_query,
    parse_sortby,
)


def item(item_id: str, cloud: float | None, platform: str = "sentinel-2a", day: int = 1) -> pystac.Item:
    props = {"platform": platform}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    return pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.1.0", "id": item_id,
        "geometry": {"type": "Point", "coordinates": [10.0 + day, 45.0]}, "bbox": [10.0 + day, 45.0, 10.0 + day, 45.0],
        "properties": {"datetime": f"2024-07-{day:02d}T10:00:00Z", **props}, "assets": {}, "links": [],
    })


ITEMS = [item("a", 30.0, day=1), item("b", 5.0, day=2), item("c", None, "landsat-9", day=3), item("d", 5.0, day=4)]


def ids(items) -> list[str]:
    return [i.id for i in items]


def test_cql2_text_and_json_filters_agree_and_are_evaluated_on_the_client():
    text = parse_filter("eo:cloud_cover < 10 AND platform = 'sentinel-2a'")
    as_json = parse_filter(json.dumps(text))
    assert text == as_json and text["op"] == "and"
    assert ids(apply(ITEMS, ItemFilter(filter=text))) == ["b", "d"]
    assert ids(apply(ITEMS, ItemFilter(filter=parse_filter("id IN ('a','c')")))) == ["a", "c"]
    with pytest.raises(ConfigError, match="not valid CQL2"):
        parse_filter("eo:cloud_cover <<< 3")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_filter("{not json", "cql2-json")


def test_query_extension_operators_on_the_client():
    assert ids(apply(ITEMS, ItemFilter(query=parse_query('{"eo:cloud_cover": {"lt": 10}}')))) == ["b", "d"]
    assert ids(apply(ITEMS, ItemFilter(query={"platform": {"startsWith": "landsat"}}))) == ["c"]
    assert ids(apply(ITEMS, ItemFilter(query={"eo:cloud_cover": {"gte": 5, "lte": 5}}))) == ["b", "d"]
    assert ids(apply(ITEMS, ItemFilter(query={"platform": {"in": ["landsat-9"]}}))) == ["c"]
    with pytest.raises(ConfigError, match="unknown operator 'less'"):
        parse_query('{"eo:cloud_cover": {"less": 10}}')
    with pytest.raises(ConfigError, match="JSON object"):
        parse_query('["eo:cloud_cover<10"]')


def test_sortby_orders_like_a_stac_api_with_missing_values_last():
    sortby = parse_sortby("eo:cloud_cover,-datetime")
    assert sortby == (("eo:cloud_cover", "asc"), ("datetime", "desc"))
    assert ids(apply(ITEMS, ItemFilter(sortby=sortby))) == ["d", "b", "a", "c"]
    assert ids(apply(ITEMS, ItemFilter(sortby=parse_sortby("-properties.eo:cloud_cover"), max_items=2))) == ["a", "b"]
    with pytest.raises(ConfigError, match="sortby"):
        parse_sortby(",")


def test_intersects_from_a_feature_collection(tmp_path):
    path = tmp_path / "area.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
            [[11.5, 44.0], [12.5, 44.0], [12.5, 46.0], [11.5, 46.0], [11.5, 44.0]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [14.0, 45.0]}},
    ]}))
    area = parse_intersects(str(path))
    assert area["type"] == "GeometryCollection" or area["type"].startswith("Multi") or area["type"] == "Polygon"
    assert ids(apply(ITEMS, ItemFilter(intersects=area))) == ["b", "d"]
    with pytest.raises(ConfigError, match="GeoJSON"):
        parse_intersects('{"type": "Nothing"}')


def test_headers_come_from_flags_and_the_environment_and_never_echo_values():
    env = {"STACEMBED_HEADERS": "X-Api-Key=abc123\n"}
    assert parse_headers(["Authorization=Bearer s3cret", "X-Trace: a=b"], env) == {
        "X-Api-Key": "abc123", "Authorization": "Bearer s3cret", "X-Trace": "a=b"}
    with pytest.raises(ConfigError) as err:
        parse_headers(["Bearer-s3cret-token"], {})
    assert "s3cret" not in str(err.value)


def test_access_gdal_options_for_asset_reads():
    options = Access(headers={"Authorization": "Bearer t0ken"}, timeout=12, retries=4, aws_unsigned=True,
                     gdal={"AWS_REGION": "us-west-2", "GDAL_HTTP_COOKIEFILE": "~/cookies.txt"}).gdal_options()
    assert options["GDAL_HTTP_TIMEOUT"] == "12" and options["GDAL_HTTP_MAX_RETRY"] == "4"
    assert options["AWS_NO_SIGN_REQUEST"] == "YES" and options["AWS_REGION"] == "us-west-2"
    assert "GDAL_HTTP_HEADERS" not in options  # --header is for the API; assets get --asset-header
    assert not options["GDAL_HTTP_COOKIEFILE"].startswith("~")
    requester = Access(requester_pays=True, gdal={"AWS_REQUEST_PAYER": "nobody"}).gdal_options()
    assert requester["AWS_REQUEST_PAYER"] == "requester"  # an explicit flag beats a preset's option


@pytest.mark.parametrize("value, expected", [
    ("512", 512 * 2**20), (512, 512 * 2**20), ("200000000", 200000000), ("256MB", 256 * 2**20),
    ("2gb", 2 * 2**30), (None, 128 * 2**20),
])
def test_gdal_cache_sizes_are_read_as_gdal_reads_them(value, expected):
    from stacembed.access import cache_bytes

    assert cache_bytes(value) == expected


def test_gdal_cache_size_from_the_user_wins_and_nonsense_is_refused(monkeypatch):
    from stacembed.access import cache_bytes

    assert Access(gdal={"GDAL_CACHEMAX": "64MB"}).gdal_options()["GDAL_CACHEMAX"] == 64 * 2**20
    assert "GDAL_CACHEMAX" not in Access().gdal_options()  # sized per read (feed.FeedSpec.cache_bytes)
    assert 0 < cache_bytes("10%") < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with pytest.raises(ConfigError, match="GDAL_CACHEMAX must be a size"):
        cache_bytes("lots")


def test_redact_removes_credentials_from_urls():
    signed = "https://user:pw@acct.blob.core.windows.net/c/B04.tif?st=2024&se=2025&sp=rl&sig=AbC%2Bd&other=1"
    assert redact(signed) == "https://acct.blob.core.windows.net/c/B04.tif"  # outputs keep no query by default
    kept = redact(signed, keep_query=True)
    assert "pw" not in kept and "AbC" not in kept and "other=1" in kept
    assert redact("/local/path.tif") == "/local/path.tif"


def test_signing_without_the_extra_is_a_clear_error():
    # planetary-computer is an optional extra, absent here
    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"stacembed\[planetary-computer\]"):
            Access(signer="planetary-computer").sign(ITEMS[0])
    with pytest.raises(ConfigError, match="--sign must be one of"):
        Access(signer="nope")


PRESET_CASES = {
    # preset: (collection as typed, collection id sent, a band map entry, signer, a GDAL option)
    "earth-search": ("sentinel-2-l2a", "sentinel-2-l2a", ("B04", "red"), None, ("AWS_REGION", "us-west-2")),
    "planetary-computer": ("sentinel-2-l2a", "sentinel-2-l2a", ("red", "B04"), "planetary-computer", None),
    "cdse": ("sentinel-2-l2a", "sentinel-2-l2a", ("B04", "B04_10m"),
             None, ("AWS_S3_ENDPOINT", "eodata.dataspace.copernicus.eu")),
    "usgs-landsatlook": ("landsat-c2l2-sr", "landsat-c2l2-sr", None, None, ("AWS_REQUEST_PAYER", "requester")),
    "nasa-cmr-stac": ("HLSS30.v2.0", "HLSS30_2.0", None, None, None),
}


def test_every_preset_is_covered_and_parses():
    presets = load_presets()
    assert set(presets) == set(PRESET_CASES)
    for preset in presets.values():
        assert preset.api.startswith("https://") and preset.collections


@pytest.mark.parametrize("name", sorted(PRESET_CASES))
def test_preset_builds_the_right_search_request(name):
    typed, sent, band, signer, gdal = PRESET_CASES[name]
    config = RunConfig.from_mapping({
        "catalog": name, "collection": typed, "bbox": "11.0,46.0,11.2,46.2", "datetime": "2024-07",
        "query": '{"eo:cloud_cover": {"lt": 10}}', "sortby": "eo:cloud_cover", "max_items": 5,
    }, need_out=False)
    search = Search.from_config(config)
    preset = load_presets()[name]
    assert search.api == preset.api and search.catalog is None and search.preset == name
    assert search.filter.collections == (sent,)
    if band:
        assert search.band_aliases[band[0]] == band[1]
    assert search.access.signer == signer
    if gdal:
        assert search.access.gdal_options()[gdal[0]] == gdal[1]
    # What pystac-client would POST to {api}/search for it:
    body = ItemSearch(f"{preset.api}/search",
                      **search_parameters(search.filter, {"query", "sort"}), max_items=5).get_parameters()
    assert list(body["collections"]) == [sent]
    assert body["bbox"] == (11.0, 46.0, 11.2, 46.2)
    assert body["datetime"] == "2024-07-01T00:00:00Z/2024-07-31T23:59:59.999999Z"
    assert body["query"] == {"eo:cloud_cover": {"lt": 10}}
    assert body["sortby"] == [{"field": "eo:cloud_cover", "direction": "asc"}]
    assert body["limit"] == 5  # pages no larger than max-items


def test_unknown_preset_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known preset.*earth-search"):
        Search.from_config(RunConfig.from_mapping({"catalog": "earth-serch"}, need_out=False))


def test_user_band_map_wins_over_the_preset():
    config = RunConfig.from_mapping({"catalog": "earth-search", "collection": "sentinel-2-l2a", "band": ["B04=visual"]},
                                    need_out=False)
    assert Search.from_config(config).band_aliases["B04"] == "visual"


def test_preset_search_carries_the_value_rules_of_its_collections():
    import datetime

    item = pystac.Item("x", None, None, datetime.datetime(2024, 7, 1), {}, collection="sentinel-2-l2a")
    config = {"catalog": "planetary-computer", "collection": "s2"}
    rules = Search.from_config(RunConfig.from_mapping(config, need_out=False)).rules_for(item)
    assert rules and {r.scale for r in rules} == {0.0001} and rules[0].when == ("s2:processing_baseline", "04.00")
    config["catalog"] = "earth-search"  # its items state raster:scale/offset: no rules
    assert Search.from_config(RunConfig.from_mapping(config, need_out=False)).rules_for(item) == ()
