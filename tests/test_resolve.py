import json

import pyarrow.parquet as pq
import pystac
import pytest
import stac_geoparquet.arrow

from stacembed.config import parse_datetime
from stacembed.errors import ResolveError
from stacembed.resolve import ItemFilter, read_item_file, resolve_items


@pytest.fixture
def catalog(synthetic_catalog):
    return synthetic_catalog("1.1", n_items=3, shape=(16, 16))


def ids(items):
    return [i.id for i in items]


def test_filters(catalog):
    everything = resolve_items(catalog=str(catalog))
    assert ids(everything) == ["item-0", "item-1", "item-2"]
    assert all(a.href.startswith("/") for i in everything for a in i.assets.values())
    assert ids(resolve_items(catalog=str(catalog), filter=ItemFilter(ids=("item-2", "item-0")))) == ["item-0", "item-2"]
    assert ids(resolve_items(catalog=str(catalog), filter=ItemFilter(max_items=2))) == ["item-0", "item-1"]
    # items are 5 km apart: a bbox around the second one only
    lon, lat = everything[1].geometry["coordinates"][0][0]
    bbox = (lon + 0.001, lat + 0.001, lon + 0.002, lat + 0.002)
    assert ids(resolve_items(catalog=str(catalog), filter=ItemFilter(bbox=bbox))) == ["item-1"]
    # datetimes are 2024-02-15, 2024-03-15, 2024-04-15
    march = ItemFilter(datetime=parse_datetime("2024-03"))
    assert ids(resolve_items(catalog=str(catalog), filter=march)) == ["item-1"]
    open_start = ItemFilter(datetime=parse_datetime("../2024-03-15T10:00:00Z"))
    assert ids(resolve_items(catalog=str(catalog), filter=open_start)) == ["item-0", "item-1"]


def test_collection_filter_and_errors(catalog):
    assert len(resolve_items(catalog=str(catalog), filter=ItemFilter(collections=("synthetic",)))) == 3
    with pytest.raises(ResolveError, match=r"collection 'other' not found .* \((it has|they have): synthetic\)"):
        resolve_items(catalog=str(catalog), filter=ItemFilter(collections=("other",)))
    with pytest.raises(ResolveError, match="no items matched .*ids=nope"):
        resolve_items(catalog=str(catalog), filter=ItemFilter(ids=("nope",)))


def _source_items(catalog):
    return [i.to_dict() for i in resolve_items(catalog=str(catalog))]


def test_item_files_in_three_formats(catalog, tmp_path):
    dicts = _source_items(catalog)
    collection_file = tmp_path / "items.json"
    collection_file.write_text(json.dumps({"type": "FeatureCollection", "features": dicts}))
    ndjson = tmp_path / "items.ndjson"
    ndjson.write_text("\n".join(json.dumps(d) for d in dicts) + "\n")
    parquet = tmp_path / "items.parquet"
    pq.write_table(stac_geoparquet.arrow.parse_stac_items_to_arrow(dicts).read_all(), parquet)
    for path in (collection_file, ndjson, parquet):
        items = read_item_file(str(path))
        assert ids(items) == ["item-0", "item-1", "item-2"], path
        assert items[0].assets["B3"].href == dicts[0]["assets"]["B3"]["href"]
    picked = resolve_items(items=str(ndjson), filter=ItemFilter(collections=("synthetic",), ids=("item-1",)))
    assert ids(picked) == ["item-1"]


def test_relative_asset_hrefs_in_item_files_resolve_against_the_file(tmp_path):
    item = pystac.Item("rel", None, None, __import__("datetime").datetime(2024, 1, 1), {})
    item.add_asset("B1", pystac.Asset("./data/B1.tif"))
    (tmp_path / "one.json").write_text(json.dumps(item.to_dict(include_self_link=False)))
    (read,) = read_item_file(str(tmp_path / "one.json"))
    assert read.assets["B1"].href == str(tmp_path / "data" / "B1.tif")


def test_unreadable_inputs(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ResolveError, match="cannot read items from"):
        read_item_file(str(tmp_path / "bad.json"))
    with pytest.raises(ResolveError, match="does not exist"):
        read_item_file(str(tmp_path / "missing.ndjson"))
    (tmp_path / "cat.json").write_text(json.dumps({"type": "Catalog"}))
    with pytest.raises(ResolveError, match="cannot read STAC catalog"):
        resolve_items(catalog=str(tmp_path / "cat.json"))


def test_collection_filter_on_a_stage_in_catalog_without_collection_documents(tmp_path):
    """Stage-in tools write catalog.json -> item links, with the collection only in each item."""
    from conftest import make_item

    items = [make_item(tmp_path, f"staged-{i}", dialect="1.1", origin=(500000.0 + i * 3000, 9100000.0),
                       shape=(32, 32), seed=i + 1, collection="s2") for i in range(2)]
    for item in items:
        item["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
        (tmp_path / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
    (tmp_path / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.1.0", "id": "staged", "description": "stage-in",
        "links": [{"rel": "root", "href": "./catalog.json"}]
        + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json"} for i in items],
    }))
    found = resolve_items(catalog=str(tmp_path / "catalog.json"), filter=ItemFilter(collections=("s2",)))
    assert ids(found) == ["staged-0", "staged-1"]
    with pytest.raises(ResolveError, match="collection 'l8' not found .*they have: s2"):
        resolve_items(catalog=str(tmp_path / "catalog.json"), filter=ItemFilter(collections=("l8",)))
