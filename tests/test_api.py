"""STAC APIs in and out, against real servers on loopback (see tests/servers.py).

The same searches are answered by a static item file (client-side), rustac (which ignores
filter/query/sortby) and pgstac (which does them): stacembed must return the same items
from all three. Runs through an API embed the same pixels as runs from a static catalog,
and publishing to pgstac is an idempotent round trip.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pystac_client
import pytest
from conftest import make_item

COLLECTION = "synthetic-api"
SECRET = "Bearer s3cret-t0ken-value"


def collection_doc(items: list[dict], collection: str = COLLECTION) -> dict:
    return {
        "type": "Collection", "stac_version": "1.1.0", "id": collection, "description": "synthetic",
        "license": "CC0-1.0",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                   "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]}},
        "links": [],
    }


@pytest.fixture(scope="module")
def api_items(tmp_path_factory) -> list[dict]:
    """Five items with real COGs and absolute asset hrefs; cloud cover 5, 10, ... 25."""
    root = tmp_path_factory.mktemp("api-items")
    items = []
    for i in range(5):
        item = make_item(root, f"api-{i}", dialect="1.1", origin=(500000.0 + i * 3000, 9100000.0),
                         shape=(64, 64), seed=i + 1, collection=COLLECTION)
        for asset in item["assets"].values():
            asset["href"] = str((root / item["id"] / asset["href"]).resolve())
        items.append(item)
    return items


@pytest.fixture(scope="module")
def item_file(api_items, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("file") / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": api_items}))
    return path


@pytest.fixture(scope="module")
def rustac_url(rustac_api, api_items) -> str:
    return rustac_api([collection_doc(api_items)], api_items)


@pytest.fixture(scope="module")
def pgstac_url(pgstac_api, api_items) -> str:
    pgstac_api.load([collection_doc(api_items)], api_items)
    yield pgstac_api.url
    pgstac_api.delete_collection(COLLECTION)


def stacembed(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacembed", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def search_ids(source: list[str], *args: str) -> list[str]:
    result = stacembed("search", *source, "--collection", COLLECTION, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return [f["id"] for f in json.loads(result.stdout)["features"]]


SEARCHES = {
    "all": ([], ["api-0", "api-1", "api-2", "api-3", "api-4"]),
    "ids": (["--ids", "api-3,api-1"], ["api-1", "api-3"]),
    "bbox": (["--bbox", "-33.01,-8.3,-32.96,-8.0"], ["api-0", "api-1"]),
    "datetime": (["--datetime", "2024-03-01/2024-04-30"], ["api-1", "api-2"]),
    "cql2-text": (["--filter", "eo:cloud_cover >= 10 AND eo:cloud_cover < 25"], ["api-1", "api-2", "api-3"]),
    "cql2-json": (["--filter", '{"op": "=", "args": [{"property": "id"}, "api-4"]}'], ["api-4"]),
    "query": (["--query", '{"eo:cloud_cover": {"gt": 15}}'], ["api-3", "api-4"]),
    "sortby": (["--sortby", "-eo:cloud_cover", "--max-items", "2"], ["api-4", "api-3"]),
    "filter+sortby": (["--filter", "eo:cloud_cover < 20", "--sortby", "-eo:cloud_cover"], ["api-2", "api-1", "api-0"]),
}


@pytest.mark.rustac
@pytest.mark.pgstac
@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_same_items_from_a_file_rustac_and_pgstac(name, item_file, rustac_url, pgstac_url):
    args, expected = SEARCHES[name]
    from_file = search_ids(["--items", str(item_file)], *args)
    from_rustac = search_ids(["--api", rustac_url], *args)
    from_pgstac = search_ids(["--api", pgstac_url], *args)
    ordered = "--sortby" in args
    norm = (lambda x: x) if ordered else sorted
    if expected is not None:
        assert norm(from_file) == expected
    else:
        assert 0 < len(from_file) < 5
    assert norm(from_rustac) == norm(from_file)
    assert norm(from_pgstac) == norm(from_file)


@pytest.mark.rustac
def test_rustac_ignoring_filters_is_detected_and_said(rustac_url):
    result = stacembed("search", "--api", rustac_url, "--collection", COLLECTION, "--format", "json",
                       "--filter", "eo:cloud_cover = 15", "--query", '{"platform": {"eq": "synthetic-sat"}}',
                       "--sortby", "eo:cloud_cover")
    assert result.returncode == 0, result.stderr
    assert [f["id"] for f in json.loads(result.stdout)["features"]] == ["api-2"]
    assert "on the client" in result.stderr


@pytest.mark.rustac
def test_paging_returns_every_item_once(rustac_url):
    ids = search_ids(["--api", rustac_url], "--page-size", "2")
    assert sorted(ids) == [f"api-{i}" for i in range(5)] and len(set(ids)) == 5
    assert len(search_ids(["--api", rustac_url], "--page-size", "2", "--max-items", "3")) == 3


@pytest.mark.rustac
def test_search_writes_files_run_reads_back(rustac_url, tmp_path):
    for fmt, name in (("geoparquet", "found.parquet"), ("ndjson", "found.ndjson"), ("json", "found.json")):
        out = tmp_path / name
        result = stacembed("search", "--api", rustac_url, "--collection", COLLECTION, "--ids", "api-1,api-2",
                           "--format", fmt, "-o", out)
        assert result.returncode == 0, result.stderr
        assert search_ids(["--items", str(out)]) == ["api-1", "api-2"]


@pytest.mark.rustac
def test_run_from_an_api_embeds_like_the_static_source(rustac_url, item_file, tmp_path):
    common = ["--collection", COLLECTION, "--ids", "api-0,api-1", "--weights", "random", "--format", "geoparquet", "-q"]
    via_api = stacembed("run", "--api", rustac_url, "--header", f"Authorization={SECRET}", "-v", *common,
                        "--out", tmp_path / "api")
    via_file = stacembed("run", "--items", item_file, *common, "--out", tmp_path / "file")
    assert via_api.returncode == 0, via_api.stderr
    assert via_file.returncode == 0, via_file.stderr
    assert "s3cret" not in via_api.stdout + via_api.stderr
    for item_id in ("api-0", "api-1"):
        a = pq.read_table(next((tmp_path / "api").glob(f"*/{item_id}/{item_id}.parquet")))
        b = pq.read_table(next((tmp_path / "file").glob(f"*/{item_id}/{item_id}.parquet")))
        assert a.column("embedding").to_pylist() == b.column("embedding").to_pylist()
        item = json.loads(next((tmp_path / "api").glob(f"*/{item_id}/{item_id}.json")).read_text())
        derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
        assert derived == [f"{rustac_url}/collections/{COLLECTION}/items/{item_id}"]
    published = "".join(p.read_text() for p in (tmp_path / "api").rglob("*.json"))
    assert "s3cret" not in published


@pytest.mark.pgstac
def test_publish_round_trip_is_idempotent(pgstac_api, item_file, tmp_path):
    out = tmp_path / "out"
    base = "https://data.example.com/runs/1"
    result = stacembed("run", "--items", item_file, "--collection", COLLECTION, "--weights", "random", "-q",
                       "--output-collection", "emb-roundtrip", "--out", out,
                       "--publish", pgstac_api.url, "--asset-base-href", base)
    assert result.returncode == 0, result.stderr
    try:
        client = pystac_client.Client.open(pgstac_api.url)
        found = list(client.search(collections=["emb-roundtrip"]).items())
        assert sorted(i.id for i in found) == [f"api-{i}" for i in range(5)]
        assets = found[0].assets
        assert assets["embeddings"].href == f"{base}/emb-roundtrip/{found[0].id}/{found[0].id}.parquet"
        assert assets["embeddings-geotiff"].href == f"{base}/emb-roundtrip/{found[0].id}/{found[0].id}.tif"
        model = [link.href for link in found[0].links if link.rel == "emb:model"]
        assert model == [f"{base}/emb-roundtrip/model/stacembed-demo-landsat.json"]
        collection = client.get_collection("emb-roundtrip")
        assert collection.extra_fields["emb:dimensions"] == 96
        # Publishing again (the CLI command this time) updates and never duplicates.
        again = stacembed("publish", out, "--api", pgstac_api.url, "--asset-base-href", base)
        assert again.returncode == 0, again.stderr
        assert "published 5 item(s)" in again.stdout
        assert len(list(client.search(collections=["emb-roundtrip"]).items())) == 5
    finally:
        pgstac_api.delete_collection("emb-roundtrip")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unreachable_api_is_one_clear_line(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    one_line_error(stacembed("search", "--api", url, "--retries", "0", "--header", f"Authorization={SECRET}"),
                   "cannot connect")
    one_line_error(stacembed("publish", str(tmp_path), "--api", url, "--asset-base-href", "https://x"),
                   "does not exist")


@pytest.mark.rustac
def test_api_errors_are_one_clear_line(rustac_url, tmp_path, item_file):
    one_line_error(stacembed("search", "--api", rustac_url, "--collection", "nope"), "collection 'nope' not found",
                   COLLECTION)
    one_line_error(stacembed("search", "--api", rustac_url, "--collection", COLLECTION, "--ids", "missing"),
                   "no items matched")
    one_line_error(stacembed("search", "--api", f"{rustac_url}/collections/{COLLECTION}/items/api-0"),
                   "not a STAC API")
    one_line_error(stacembed("search", "--api", f"{rustac_url}/nothing-here"), "HTTP 404")
    # rustac has no Transactions extension: publishing there is refused up front.
    out = tmp_path / "out"
    assert stacembed("run", "--items", item_file, "--ids", "api-0", "--weights", "random", "-q",
                     "--out", out).returncode == 0
    one_line_error(stacembed("publish", out, "--api", rustac_url, "--asset-base-href", "https://x"), "Transactions")


def test_server_errors_are_retried_then_one_clear_line():
    import http.server
    import threading

    calls = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "maintenance"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        one_line_error(stacembed("search", "--api", url, "--retries", "2", "--timeout", "5"), "STAC API", url)
        assert len(calls) == 3  # the first try and two retries with backoff
    finally:
        server.shutdown()
