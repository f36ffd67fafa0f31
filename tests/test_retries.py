"""A flaky network is retried everywhere stacembed reads over HTTP (issue 15, item 8).

The server fails the first try of every distinct request (method, path, byte range) by turns
with 503, a dropped connection (the socket closed with no response: curl's "Empty reply from
server") and 500; the second try succeeds. With ``--retries`` the catalog JSON, item files and
the COGs must all come through. Everything runs on loopback in threads of the test process.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from range_http import RangeRequestHandler, loopback_environment, serving

from stacembed.access import Access

# Retries, and GDAL's first wait between them shortened (the user's --gdal wins over the default 1 s).
RETRY = ("--timeout", "10", "--retries", "3", "--gdal", "GDAL_HTTP_RETRY_DELAY=0.05")
KINDS = (503, "drop", 500)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    loopback_environment(monkeypatch)


class Flaky(RangeRequestHandler):
    """Fails the first try of each request for a path ending in one of ``suffixes``; records the failures."""

    def __init__(self, *args, state: dict, suffixes: tuple[str, ...], kinds: tuple = KINDS, **kwargs) -> None:
        self._state, self._suffixes, self._kinds = state, suffixes, kinds
        super().__init__(*args, log=state["log"], **kwargs)

    def send_head(self):
        key = (self.command, self.path, self.headers.get("Range"))
        state = self._state
        with state["lock"]:
            first = key not in state["tried"] and self.path.split("?")[0].endswith(self._suffixes)
            state["tried"].add(key)
            kind = self._kinds[len(state["failed"]) % len(self._kinds)] if first else None
            if first:
                state["failed"].append((self.path, kind))
        if kind == "drop":
            self.close_connection = True  # no status line, no headers: the connection just ends
            return None
        if kind is not None:
            self.send_error(kind)
            return None
        return super().send_head()


@contextlib.contextmanager
def flaky(root: Path, *suffixes: str, kinds: tuple = KINDS) -> Iterator[tuple[str, dict]]:
    state = {"lock": threading.Lock(), "tried": set(), "failed": [], "log": []}
    handler = functools.partial(Flaky, directory=str(root), state=state, suffixes=suffixes, kinds=kinds)
    with serving(handler) as url:
        yield url, state


def failed_kinds(state: dict, suffix: str) -> set:
    return {kind for path, kind in state["failed"] if path.split("?")[0].endswith(suffix)}


def test_static_catalog_over_http_is_retried(synthetic_catalog, cli):
    catalog = synthetic_catalog("1.1", n_items=2, shape=(64, 64))
    with flaky(catalog.parent, ".json") as (url, state):
        result = cli("search", "--catalog", f"{url}/catalog.json", "--format", "json", *RETRY)
    assert result.exit_code == 0, result.output
    assert sorted(f["id"] for f in json.loads(result.stdout)["features"]) == ["item-0", "item-1"]
    assert failed_kinds(state, ".json") == set(KINDS)  # catalog, collection and items each failed once


def test_item_file_over_http_is_retried(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=2, shape=(64, 64))
    items = [json.loads(p.read_text()) for p in sorted(catalog.parent.glob("synthetic/*/*.json"))]
    (catalog.parent / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    with flaky(catalog.parent, "items.json", kinds=(503,)) as (url, state):
        result = cli("search", "--items", f"{url}/items.json", "--format", "json", *RETRY)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["features"]) == 2 and state["failed"]


def test_assets_are_retried_through_dropped_connections_and_server_errors(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    with flaky(catalog.parent, ".json", ".tif") as (url, state):
        result = cli("run", "--catalog", f"{url}/catalog.json", "--out", tmp_path / "out", "--format", "geoparquet",
                     "-q", *RETRY)
    assert result.exit_code == 0, result.output
    assert failed_kinds(state, ".tif") == set(KINDS)
    assert next((tmp_path / "out").glob("*/item-0/item-0.parquet"))


def test_gdal_retries_dropped_connections_and_the_user_can_say_otherwise():
    codes = Access().gdal_options()["GDAL_HTTP_RETRY_CODES"].split(",")
    assert "0" in codes  # no HTTP status at all: the connection dropped, timed out or was reset
    assert {"429", "500", "502", "503", "504"} <= set(codes) and "404" not in codes
    assert Access(gdal={"GDAL_HTTP_RETRY_CODES": "ALL"}).gdal_options()["GDAL_HTTP_RETRY_CODES"] == "ALL"


def test_api_requests_keep_the_timeout(cli):
    """pystac-client's Client.open resets a StacApiIO's timeout unless it is given again."""
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(4)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        result = cli("search", "--api", f"http://127.0.0.1:{server.server_address[1]}", "--timeout", "1",
                     "--retries", "0")
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 1 and "no answer within 1 s" in result.output, result.output
    assert elapsed < 3.5


def test_model_cards_weights_and_embedding_catalogs_are_retried_too(tmp_path, monkeypatch):
    """The siblings: a card by URL, a weights download and an embeddings catalog read over http."""
    import shutil

    from stacembed import RunConfig, run
    from stacembed.embeddings import open_embeddings
    from stacembed.models import load_card
    from stacembed.models.registry import CARDS_DIR
    from stacembed.models.weights import resolve_weights

    served = tmp_path / "served"
    shutil.copytree(CARDS_DIR, served / "cards")
    run(RunConfig(out=served / "out", weights="random", formats=("geoparquet",), progress=False))
    monkeypatch.setenv("STACEMBED_CACHE", str(tmp_path / "cache"))
    with flaky(served, ".json", ".safetensors", ".parquet") as (url, state):
        card = load_card(f"{url}/cards/stacembed-demo-landsat.json")
        assert card.weights_href == f"{url}/cards/stacembed-demo-landsat.safetensors"
        weights = resolve_weights(card)
        assert weights.read_bytes() == (CARDS_DIR / "stacembed-demo-landsat.safetensors").read_bytes()
        items = list(open_embeddings(f"{url}/out/catalog.json"))
        assert len(items) == 4 and all(len(item.vectors()) for item in items)
    failed = {path.split("?")[0].rsplit(".", 1)[-1] for path, _ in state["failed"]}
    assert failed == {"json", "safetensors", "parquet"}  # each kind of read met a failure, and came through
