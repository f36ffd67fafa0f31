"""A static catalog served over HTTP (with Range requests, as COGs are read) embeds like the local one.

GDAL's ``/vsicurl/`` reads the COGs from a loopback server running in a thread of the test
process (rasterio releases the interpreter lock around GDAL I/O). GDAL is told not to retry and
to time out quickly (``--timeout``/``--retries``, and the same as environment variables), and every
server connection has a socket timeout, so nothing here can hang: a stuck request fails the run
after 10 seconds instead.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
from range_http import loopback_environment, serve

# The run's own network settings (applied to GDAL as config options, over the environment).
NO_WAIT = ("--timeout", "10", "--retries", "0")


@pytest.fixture
def served_catalog(synthetic_catalog, monkeypatch):
    """(local catalog.json path, base URL, request log) of a synthetic catalog on a loopback server."""
    loopback_environment(monkeypatch, GDAL_HTTP_MAX_RETRY="0")
    catalog = synthetic_catalog("1.1", n_items=2, shape=(100, 130))
    with serve(catalog.parent) as (url, log):
        yield catalog, url, log


def embeddings_by_item(out) -> dict[str, np.ndarray]:
    tables = {}
    for path in sorted(out.glob("*/*/*.parquet")):
        table = pq.read_table(path, columns=["chip_row", "chip_col", "embedding"]).to_pandas()
        table = table.sort_values(["chip_row", "chip_col"])
        tables[path.stem] = np.stack(table["embedding"].to_numpy())
    return tables


def test_the_range_server_answers_like_an_object_store(served_catalog):
    catalog, url, _ = served_catalog
    tif = catalog.parent / "synthetic" / "item-0" / "B1.tif"
    body = tif.read_bytes()
    request = urllib.request.Request(f"{url}/synthetic/item-0/B1.tif", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
        assert response.read() == body[10:20]
    head = urllib.request.Request(f"{url}/synthetic/item-0/B1.tif", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as response:
        assert response.headers["Content-Length"] == str(len(body))
        assert response.headers["Accept-Ranges"] == "bytes"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/missing.json", timeout=5)
    assert missing.value.code == 404


def test_http_catalog_embeds_like_the_same_catalog_on_disk(served_catalog, cli, tmp_path):
    catalog, url, log = served_catalog
    local_out, http_out = tmp_path / "local", tmp_path / "http"

    result = cli("run", "--catalog", catalog, "--out", local_out, "--format", "geoparquet", "-q")
    assert result.exit_code == 0, result.output
    remote = cli("run", "--catalog", f"{url}/catalog.json", "--out", http_out, "--format", "geoparquet", "-q",
                 *NO_WAIT)
    assert remote.exit_code == 0, remote.output

    # The COGs really were read over HTTP, with Range requests.
    ranged = [path for method, path, spec in log if method == "GET" and path.endswith(".tif") and spec]
    assert {p.rsplit("/", 1)[-1] for p in ranged} >= {"B1.tif", "B7.tif"}, log

    for i in range(2):
        item = json.loads(next(http_out.glob(f"*/item-{i}/item-{i}.json")).read_text())
        derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
        assert derived == [f"{url}/synthetic/item-{i}/item-{i}.json"]

    local, remote_emb = embeddings_by_item(local_out), embeddings_by_item(http_out)
    assert sorted(local) == sorted(remote_emb) == ["item-0", "item-1"]
    for name in local:
        assert local[name].shape == (4, 96)  # 100x130 px in 64 px chips: 2 x 3 positions, >= 0.5 valid
        np.testing.assert_array_equal(remote_emb[name], local[name])


def test_missing_http_catalog_is_a_one_line_error(served_catalog, cli, tmp_path):
    _, url, log = served_catalog
    out = tmp_path / "out"
    # In-process with catch_exceptions=False: anything but a StacembedError would raise here.
    result = cli("run", "--catalog", f"{url}/missing.json", "--out", out, *NO_WAIT)
    assert result.exit_code == 1, result.output
    assert ("GET", "/missing.json", None) in log
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("stacembed: error: ") and "missing.json" in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.rglob("*.json"))
