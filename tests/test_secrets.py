"""Credentials in URLs and headers stay where they belong (issue 15, items 6 and 7).

- Messages (errors, stacembed's and GDAL's log records) keep a URL's scheme, host and path and
  mask every query value and any userinfo, whatever the parameter is called.
- Hrefs written to outputs (``derived_from``, ``emb:source-data``, ``items.parquet``, published
  STAC) carry neither userinfo nor a query, unless ``--keep-href-query``.
- ``--header`` goes to the STAC API / catalog named on the command line (its origin only);
  assets get ``--asset-header``, and nothing else.

Servers are threads of the test process on loopback; parameter names are ones stacembed has
never been told about (``auth``, ``x-my-secret``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pystac
import pytest
from range_http import RangeRequestHandler, loopback_environment, serving

from stacembed.access import Access, install_log_redaction, redact, redact_text
from stacembed.catalog import canonical_href
from stacembed.config import RunConfig

NO_WAIT = ("--timeout", "10", "--retries", "0")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    loopback_environment(monkeypatch, "STACEMBED_HEADERS", "STACEMBED_ASSET_HEADERS")


class Recorder(RangeRequestHandler):
    """The range server, recording every request with its headers; ``.tif`` answers ``tif_status``."""

    def __init__(self, *args, seen: list, tif_status: int | None = None, **kwargs) -> None:
        self._seen, self._tif_status = seen, tif_status
        super().__init__(*args, log=[], **kwargs)

    def send_head(self):
        self._seen.append((self.command, self.path, dict(self.headers)))
        if self._tif_status and self.path.split("?")[0].endswith(".tif"):
            self.send_error(self._tif_status)
            return None
        return super().send_head()


class FakeApi(http.server.BaseHTTPRequestHandler):
    """Answers ``routes[path]`` (JSON) to GET, 201 to POST/PUT; records (method, path, headers, body)."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, seen: list, routes: dict, **kwargs) -> None:
        self._seen, self._routes = seen, routes
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args) -> None:
        pass

    def _answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._seen.append(("GET", self.path, dict(self.headers), None))
        route = self._routes.get(self.path.split("?")[0])
        if route == "echo":  # what some servers do: show the request, credentials and all
            self._answer(401, {"detail": dict(self.headers)})
        elif route is None:
            self._answer(404, {"detail": "not found"})
        else:
            self._answer(200, route)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length).decode()))
        route = self._routes.get(self.path.split("?")[0])
        if isinstance(route, dict):  # a search by POST
            self._answer(200, route)
        else:  # publishing
            self._answer(201, {})

    do_PUT = do_POST


@contextlib.contextmanager
def serve(handler, **kwargs) -> Iterator[tuple[str, list]]:
    seen: list = []
    with serving(functools.partial(handler, seen=seen, **kwargs)) as url:
        yield url, seen


def stacembed(*args) -> subprocess.CompletedProcess:
    """The console entry point in a subprocess: stderr as a user sees it (logging included)."""
    return subprocess.run([sys.executable, "-m", "stacembed", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# --- the two redactions --------------------------------------------------------------------

def test_messages_mask_every_query_value_and_userinfo():
    text = ("cannot read raster https://reader:pa55@host.example/c/B04.tif?x-my-secret=abc&auth=def&st=2024 "
            "and '/vsicurl?header.X-Key=ghi&url=https://h/x.tif' (GET /items?token=jkl HTTP/1.1)")
    masked = redact_text(text)
    for secret in ("pa55", "reader", "abc", "def", "2024", "ghi", "jkl"):
        assert secret not in masked, masked
    assert "https://***@host.example/c/B04.tif?x-my-secret=***&auth=***&st=***" in masked
    assert "GET /items?token=*** HTTP/1.1" in masked
    assert redact_text("Authorization: Basic dXNlcjpwYTU1d29yZA==") == "Authorization: Basic ***"
    assert redact_text("plain text, /a/path and http://host/p stay") == "plain text, /a/path and http://host/p stay"


def test_output_hrefs_lose_userinfo_and_query_unless_kept():
    href = "https://reader:pa55@host.example/items/a.json?auth=s3&x-my-secret=s4&version=2#frag"
    assert redact(href) == "https://host.example/items/a.json"
    kept = redact(href, keep_query=True)
    assert kept.startswith("https://host.example/items/a.json?") and "version=2" in kept and "pa55" not in kept
    # what is known to be a credential goes even when the query is kept
    assert "sig" not in redact("https://h/x.json?sig=AbC&v=1", keep_query=True)
    assert redact("/local/dir/item.json") == "/local/dir/item.json"

    item = pystac.Item("a", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {})
    item.set_self_href("https://host.example/a.json?auth=s3")
    assert canonical_href(item) == "https://host.example/a.json"
    item.add_link(pystac.Link("canonical", "https://u:p@origin.example/a.json?x-my-secret=s5"))
    assert canonical_href(item) == "https://origin.example/a.json"
    assert canonical_href(item, keep_query=True) == "https://origin.example/a.json?x-my-secret=s5"


def test_log_records_of_network_libraries_are_masked(caplog):
    install_log_redaction()
    install_log_redaction()  # once is enough; twice changes nothing
    url = "https://u:pa55@h.example/x.tif?auth=s3cr3t"
    with caplog.at_level(logging.DEBUG):
        for name in ("stacembed", "rasterio._err", "rasterio._env", "urllib3.connectionpool", "pystac_client.x",
                     "requests"):
            logging.getLogger(name).warning("GDAL: HTTP error code: 503 - %s. Retrying", url)
        try:
            raise OSError(f"cannot open {url}")
        except OSError:
            logging.getLogger("stacembed").exception("failed")
    assert len(caplog.records) == 7
    assert "s3cr3t" not in caplog.text and "pa55" not in caplog.text, caplog.text
    expected = "GDAL: HTTP error code: 503 - https://***@h.example/x.tif?auth=***. Retrying"
    assert caplog.records[0].getMessage() == expected


# --- outputs -------------------------------------------------------------------------------

def _signed_items_file(catalog: Path, url: str, path: Path) -> Path:
    """The synthetic items as a store hands them out: signed asset URLs, tokens in item/collection links."""
    lines = []
    for item_json in sorted(catalog.parent.glob("synthetic/*/*.json")):
        item = json.loads(item_json.read_text())
        base = f"{url}/synthetic/{item['id']}"
        for key, asset in item["assets"].items():
            asset["href"] = f"{base}/{key}.tif?x-my-secret=SEKRET-ASSET&sig=SEKRET-SIG"
        host = url.removeprefix("http://")
        item["links"] = [
            {"rel": "self", "href": f"http://reader:SEKRET-PASS@{host}/synthetic/{item['id']}/{item['id']}.json"
                                    f"?auth=SEKRET-SELF"},
            {"rel": "collection", "href": f"{url}/synthetic/collection.json?auth=SEKRET-COLL"},
        ]
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")
    return path


def _all_output_text(out: Path) -> str:
    texts = [p.read_text() for p in out.rglob("*.json")]
    for parquet in out.rglob("*.parquet"):
        table = pq.read_table(parquet)
        texts.append(json.dumps(table.drop_columns([c for c in table.column_names if c == "embedding"])
                                .to_pylist(), default=str))
        texts.append(str(table.schema.metadata))
    return "\n".join(texts)


def test_run_outputs_and_published_stac_carry_no_href_secrets(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=2, shape=(64, 64))
    api_routes = {"/": {"conformsTo": ["https://api.stacspec.org/v1.0.0/ogcapi-features/extensions/transaction"]}}
    with serve(Recorder, directory=str(catalog.parent)) as (url, _), \
            serve(FakeApi, routes=api_routes) as (api, published):
        items = _signed_items_file(catalog, url, tmp_path / "items.ndjson")
        out = tmp_path / "out"
        result = cli("run", "--items", items, "--out", out, "-q", *NO_WAIT,
                     "--publish", api, "--asset-base-href", "https://data.example.com/out")
        assert result.exit_code == 0, result.output
    assert "SEKRET" not in result.output

    item = json.loads(next(out.glob("*/item-0/item-0.json")).read_text())
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [
        f"{url}/synthetic/item-0/item-0.json"]
    collection = json.loads(next(out.glob("*/collection.json")).read_text())
    assert [link["href"] for link in collection["links"] if link["rel"] == "emb:source-data"] == [
        f"{url}/synthetic/collection.json"]
    assert next(out.glob("*/items.parquet"))
    text = _all_output_text(out)
    assert "SEKRET" not in text

    bodies = [body for method, _, _, body in published if method in ("POST", "PUT")]
    assert len(bodies) == 3  # the collection and two items
    assert not any("SEKRET" in body for body in bodies)


# --- messages ------------------------------------------------------------------------------

def test_errors_and_gdal_warnings_never_show_url_secrets(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    with serve(Recorder, directory=str(catalog.parent), tif_status=503) as (url, seen), \
            serve(FakeApi, routes={"/": "echo"}) as (api, _):
        # a catalog that is not there
        missing = stacembed("search", "--catalog", f"{url}/missing.json?token=SEKRET-CAT", *NO_WAIT)
        # assets that answer 503: GDAL retries (and warns), then the read fails
        items = _signed_items_file(catalog, url, tmp_path / "items.ndjson")
        failing = stacembed("run", "--items", items, "--out", tmp_path / "out", "-q", "--timeout", "10",
                            "--retries", "1", "--gdal", "GDAL_HTTP_RETRY_DELAY=0.01")
        verbose = stacembed("search", "--catalog", f"http://u:SEKRET-PASS@{url[7:]}/missing.json?token=SEKRET-CAT",
                            "-v", *NO_WAIT)
        # a server that echoes the request, Basic credentials from the URL's userinfo included
        echoed = stacembed("search", "--api", f"http://user:SEKRET-PW@{api[7:]}/", *NO_WAIT)
    basic = base64.b64encode(b"user:SEKRET-PW").decode()

    assert missing.returncode == 1 and "stacembed: error: cannot read STAC catalog" in missing.stderr
    assert f"{url}/missing.json?token=***" in missing.stderr, missing.stderr
    assert failing.returncode == 1, failing.stderr
    assert "Retrying" in failing.stderr and "cannot read raster" in failing.stderr, failing.stderr  # GDAL warned
    assert any(path.endswith("x-my-secret=SEKRET-ASSET&sig=SEKRET-SIG") for _, path, _ in seen)  # sent, not shown
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert echoed.returncode == 1 and "HTTP 401" in echoed.stderr, echoed.stderr
    for result in (missing, failing, verbose, echoed):
        assert "SEKRET" not in result.stderr + result.stdout, result.stderr
        assert basic not in result.stderr, result.stderr


# --- where headers go ----------------------------------------------------------------------

def test_header_goes_to_the_catalog_origin_and_asset_header_to_asset_reads(synthetic_catalog, cli, tmp_path):
    """A catalog on one host whose items name assets on another (B1-B3) and on its own (the rest)."""
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    with serve(Recorder, directory=str(catalog.parent)) as (catalog_url, at_catalog), \
            serve(Recorder, directory=str(catalog.parent)) as (asset_url, at_assets):
        item_json = catalog.parent / "synthetic" / "item-0" / "item-0.json"
        item = json.loads(item_json.read_text())
        for key in ("B1", "B2", "B3"):
            item["assets"][key]["href"] = f"{asset_url}/synthetic/item-0/{key}.tif"
        item_json.write_text(json.dumps(item))
        result = cli("run", "--catalog", f"{catalog_url}/catalog.json", "--out", tmp_path / "out", "-q", *NO_WAIT,
                     "--header", "X-Api-Key=api-only", "--asset-header", "X-Asset-Key=assets-only")
        assert result.exit_code == 0, result.output

    def sent(seen, suffix):
        return [headers for _, path, headers in seen if path.split("?")[0].endswith(suffix)]

    catalog_json, catalog_tifs = sent(at_catalog, ".json"), sent(at_catalog, ".tif")
    asset_tifs = sent(at_assets, ".tif")
    assert catalog_json and catalog_tifs and asset_tifs
    assert all(h.get("X-Api-Key") == "api-only" and "X-Asset-Key" not in h for h in catalog_json)
    for headers in catalog_tifs + asset_tifs:
        assert headers.get("X-Asset-Key") == "assets-only" and "X-Api-Key" not in headers, headers
    assert not sent(at_assets, ".json")


def test_api_headers_do_not_follow_links_to_other_hosts(cli):
    """A search whose next page lives on another host: that host gets no credentials."""
    def item(item_id: str) -> dict:
        return {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "geometry": None,
                "properties": {"datetime": "2024-01-01T00:00:00Z"}, "links": [], "assets": {}}

    other_routes: dict = {}
    routes: dict = {}
    with serve(FakeApi, routes=routes) as (api, at_api), serve(FakeApi, routes=other_routes) as (other, at_other):
        routes["/"] = {"type": "Catalog", "id": "api", "description": "d", "stac_version": "1.1.0",
                       "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                      "https://api.stacspec.org/v1.0.0/item-search"],
                       "links": [{"rel": "self", "href": f"{api}/"}, {"rel": "root", "href": f"{api}/"},
                                 {"rel": "search", "href": f"{api}/search", "method": "GET",
                                  "type": "application/geo+json"}]}
        routes["/search"] = {"type": "FeatureCollection", "features": [item("one")],
                             "links": [{"rel": "next", "href": f"{other}/page2", "method": "GET"}]}
        other_routes["/page2"] = {"type": "FeatureCollection", "features": [item("two")], "links": []}
        result = cli("search", "--api", api, "--format", "json", "--header", "X-Api-Key=api-only", *NO_WAIT)
    assert result.exit_code == 0, result.output
    assert [f["id"] for f in json.loads(result.stdout)["features"]] == ["one", "two"]
    assert at_api and all(headers.get("X-Api-Key") == "api-only" for _, _, headers, _ in at_api)
    assert at_other and all("X-Api-Key" not in headers for _, _, headers, _ in at_other)


def test_asset_headers_from_flags_config_and_environment(monkeypatch):
    config = RunConfig.from_mapping({"asset-header": ["X-A=1"], "header": ["X-Api=2"], "keep-href-query": True},
                                    need_out=False)
    assert config.asset_headers == {"X-A": "1"} and config.keep_href_query is True
    options = config.access().gdal_options()
    assert options["GDAL_HTTP_HEADERS"] == "X-A: 1"  # --header never reaches GDAL
    assert "GDAL_HTTP_HEADERS" not in Access(headers={"Authorization": "Bearer x"}).gdal_options()
    monkeypatch.setenv("STACEMBED_ASSET_HEADERS", "X-From-Env=3")
    monkeypatch.setenv("STACEMBED_HEADERS", "X-Api-Env=4")
    config = RunConfig.from_mapping({}, need_out=False)  # no flag: the environment alone counts
    assert config.asset_headers == {"X-From-Env": "3"} and config.headers == {"X-Api-Env": "4"}
