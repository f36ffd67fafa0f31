"""The loopback STAC API fixtures (tests/servers.py) serve what they are given, as pystac-client sees it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pystac_client import Client
from servers import PgstacApi, StartRustac

ITEM_COUNT = 25


def make_collection(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": collection_id, "description": "test collection",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[0.0, 0.0, 3.0, 1.0]]},
                   "temporal": {"interval": [["2021-01-01T00:00:00Z", "2021-01-25T00:00:00Z"]]}},
    }


def make_item(collection_id: str, index: int) -> dict[str, Any]:
    """A small item whose eo:cloud_cover equals its index, so filters have a known answer."""
    west = index * 0.1
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": f"{collection_id}-{index:02d}", "collection": collection_id,
        "geometry": {"type": "Polygon", "coordinates": [[[west, 0.0], [west + 0.1, 0.0], [west + 0.1, 1.0],
                                                         [west, 1.0], [west, 0.0]]]},
        "bbox": [west, 0.0, west + 0.1, 1.0],
        "properties": {"datetime": f"2021-01-{index + 1:02d}T00:00:00Z", "eo:cloud_cover": index},
        "assets": {"data": {"href": f"/nonexistent/{collection_id}/{index}.tif",
                            "type": "image/tiff; application=geotiff", "roles": ["data"]}},
        "links": [{"rel": "self", "href": f"./{index}.json"}],
    }


def make_items(collection_id: str, count: int = ITEM_COUNT) -> list[dict[str, Any]]:
    return [make_item(collection_id, index) for index in range(count)]


def search_ids(url: str, collection_id: str, **search: Any) -> list[str]:
    return [item.id for item in Client.open(url).search(collections=[collection_id], **search).items()]


@pytest.mark.rustac
def test_rustac_serves_all_items_across_pages(rustac_api: StartRustac) -> None:
    url = rustac_api([make_collection("paged")], make_items("paged"))

    pages = list(Client.open(url).search(collections=["paged"], limit=10).pages())
    ids = [item.id for page in pages for item in page.items]

    assert [len(page.items) for page in pages] == [10, 10, 5]
    assert sorted(ids) == sorted(item["id"] for item in make_items("paged"))
    first = pages[0].items[0]
    assert first.assets["data"].href == "/nonexistent/paged/0.tif"
    assert first.get_self_href() == f"{url}/collections/paged/items/{first.id}"


@pytest.mark.rustac
def test_rustac_servers_are_independent(rustac_api: StartRustac) -> None:
    first = rustac_api([make_collection("one")], make_items("one", 3))
    second = rustac_api([make_collection("two")], make_items("two", 2))

    assert first != second
    assert [c.id for c in Client.open(second).get_collections()] == ["two"]
    assert len(search_ids(second, "two")) == 2


@pytest.fixture
def pgstac_collection(pgstac_api: PgstacApi, request: pytest.FixtureRequest) -> Iterator[str]:
    """A collection of ITEM_COUNT items in the shared pgstac database, named after the test, removed after it."""
    collection_id = request.node.name.replace("_", "-")
    pgstac_api.load([make_collection(collection_id)], make_items(collection_id))
    yield collection_id
    pgstac_api.delete_collection(collection_id)


@pytest.mark.pgstac
def test_pgstac_answers_cql2_json_filter(pgstac_api: PgstacApi, pgstac_collection: str) -> None:
    cloudy_below_3 = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 3]}

    ids = search_ids(pgstac_api.url, pgstac_collection, filter=cloudy_below_3, filter_lang="cql2-json")

    assert sorted(ids) == [f"{pgstac_collection}-{i:02d}" for i in range(3)]


@pytest.mark.pgstac
def test_pgstac_answers_query_dict(pgstac_api: PgstacApi, pgstac_collection: str) -> None:
    ids = search_ids(pgstac_api.url, pgstac_collection, query={"eo:cloud_cover": {"gte": 22}}, limit=2)

    assert sorted(ids) == [f"{pgstac_collection}-{i:02d}" for i in (22, 23, 24)]


@pytest.mark.pgstac
def test_pgstac_transactions_reject_duplicates_and_accept_put(pgstac_api: PgstacApi, pgstac_collection: str) -> None:
    item = make_item(pgstac_collection, 0)
    items_url = f"{pgstac_api.url}/collections/{pgstac_collection}/items"

    duplicate = requests.post(items_url, json=item, timeout=10)
    item["properties"]["eo:cloud_cover"] = 99
    replaced = requests.put(f"{items_url}/{item['id']}", json=item, timeout=10)

    assert duplicate.status_code == 409
    assert replaced.status_code == 200
    served = requests.get(f"{items_url}/{item['id']}", timeout=10).json()
    assert served["properties"]["eo:cloud_cover"] == 99


@pytest.mark.pgstac
def test_pgstac_delete_collection_removes_it(pgstac_api: PgstacApi) -> None:
    pgstac_api.load([make_collection("doomed")], make_items("doomed", 2))

    pgstac_api.delete_collection("doomed")

    assert requests.get(f"{pgstac_api.url}/collections/doomed", timeout=10).status_code == 404
