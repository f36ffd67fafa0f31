"""`stacembed explore` (``stacembed.web``): the endpoints over HTTP, and the page in headless Chromium.

A run of the bundled sample catalog with random weights (4 items, 36 chips); expected neighbours
come from ``similar()`` called directly. The browser test uses Debian's chromium
(``/usr/bin/chromium``) through PyPI's playwright, without ``playwright install``; it skips when
either is missing, unless ``STACEMBED_REQUIRE_BROWSER`` is set (CI), where it fails instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import shapely
from click.testing import CliRunner

from stacembed import RunConfig, run
from stacembed.analysis.similar import Query, similar
from stacembed.cli import main
from stacembed.web import make_server
from stacembed.web.server import STATIC

CHROMIUM = os.environ.get("STACEMBED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ITEMS = 4


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "out"
    run(RunConfig(out=out, weights="random", progress=False))
    return out


def _serving(catalog):
    """``make_server`` on a free port, in a thread, until the fixture's module is done."""
    server = make_server(catalog, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def server(out):
    yield from _serving(out)


def get(server, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def get_error(server, path: str) -> tuple[int, str]:
    status, content_type, body = get(server, path)
    assert content_type == "application/json"
    message = json.loads(body)["error"]
    assert message and "\n" not in message
    return status, message


def chip_centre(out: Path) -> tuple[float, float, str]:
    """A chip well inside the sample: the lon/lat of its footprint's centroid, and its id."""
    hits = similar(out, Query.from_chip("L7-olinda-r0c0", 2, 2), k=1)
    centre = shapely.from_wkb(hits.column("geometry")[0].as_py()).centroid
    return centre.x, centre.y, "L7-olinda-r0c0:2:2"


# -- HTTP ---------------------------------------------------------------------------------------

def test_items(server, out):
    status, content_type, body = get(server, "/api/items")
    assert status == 200 and content_type == "application/json"
    features = json.loads(body)["features"]
    assert len(features) == ITEMS
    for feature in features:
        props = feature["properties"]
        item = json.loads(next(out.glob(f"*/{props['id']}/{props['id']}.json")).read_text())
        assert props["bbox"] == item["bbox"]
        when = item["properties"]["datetime"] or item["properties"]["start_datetime"]  # the item's, or its start
        assert props["datetime"][:19] == when[:19]
        status, content_type, png = get(server, props["thumbnail"])
        assert status == 200 and content_type == "image/png"
        assert png == (next(out.glob(f"*/{props['id']}/{props['id']}.thumbnail.png"))).read_bytes()


def test_similar_endpoint_matches_similar(server, out):
    lon, lat, chip = chip_centre(out)
    status, _, body = get(server, f"/api/similar?lon={lon!r}&lat={lat!r}&k=7")
    assert status == 200
    result = json.loads(body)
    expected = similar(out, Query.from_point(lon, lat), k=7).to_pylist()
    assert result["query"]["chips"] == [chip]
    got = [f["properties"] for f in result["features"]]
    assert [(p["rank"], p["item"], p["chip_row"], p["chip_col"]) for p in got] == \
        [(e["rank"], e["item"], e["chip_row"], e["chip_col"]) for e in expected]
    assert [p["similarity"] for p in got] == pytest.approx([e["similarity"] for e in expected], abs=1e-6)
    assert (got[0]["item"], got[0]["chip_row"], got[0]["chip_col"]) == ("L7-olinda-r0c0", 2, 2)
    shape = shapely.geometry.shape(result["features"][0]["geometry"])
    assert shape.covers(shapely.Point(lon, lat))


def test_page_and_static(server):
    status, content_type, body = get(server, "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"/static/vendor/leaflet/leaflet.js" in body and b"http" not in body.replace(b"http-equiv", b"")
    for path in ("app.js", "app.css", "vendor/leaflet/leaflet.js", "vendor/leaflet/leaflet.css",
                 "vendor/leaflet/images/layers.png"):
        status, _, data = get(server, f"/static/{path}")
        assert status == 200 and data == (STATIC / path).read_bytes()
    assert (STATIC / "vendor/leaflet/LICENSE").is_file()


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static/%2fetc%2fpasswd",
    "/static/vendor/../../server.py", "/static/", "/api/thumbnail/..%2f..%2fcatalog.json",
    "/api/thumbnail/%2fetc%2fpasswd", "/api/thumbnail/no-such-item", "/api/nothing", "/../../etc/passwd",
])
def test_bad_paths_are_404_json(server, path):
    status, message = get_error(server, path)
    assert status == 404, message


def test_thumbnail_outside_catalog_is_refused(out, tmp_path):
    """An item whose thumbnail asset points outside the catalog's directory is not served."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    item_path = next(copy.glob("*/L7-olinda-r0c0/L7-olinda-r0c0.json"))
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG secret")
    item = json.loads(item_path.read_text())
    item["assets"]["thumbnail"]["href"] = str(outside)
    item_path.write_text(json.dumps(item))
    server = make_server(copy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        features = json.loads(get(server, "/api/items")[2])["features"]
        thumbnails = {f["properties"]["id"]: f["properties"]["thumbnail"] for f in features}
        assert thumbnails["L7-olinda-r0c0"] is None and thumbnails["L7-olinda-r0c1"]
        status, _ = get_error(server, "/api/thumbnail/L7-olinda-r0c0")
        assert status == 404
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("query", "words"), [
    ("", "missing parameter lon"),
    ("lon=1", "missing parameter lat"),
    ("lon=x&lat=1", "must be numbers"),
    ("lon=nan&lat=1", "not a WGS84 point"),
    ("lon=200&lat=1", "not a WGS84 point"),
    ("lon=-34.88&lat=-7.99&k=0", "k must be between"),
    ("lon=-34.88&lat=-7.99&k=1.5", "must be numbers"),
    ("lon=10&lat=10", "outside every chip"),
    ("lon=-34.88&lat=-7.99&k=200", "more than the 36 chips"),
])
def test_similar_bad_requests_are_400_json(server, query, words):
    status, message = get_error(server, f"/api/similar?{query}")
    assert status == 400 and words in message


def test_post_refused(server):
    request = urllib.request.Request(server.url + "api/items", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 405


def test_cli_bad_catalog(tmp_path):
    result = CliRunner().invoke(main, ["explore", str(tmp_path / "missing"), "--no-browser"])
    assert result.exit_code == 1 and "cannot read STAC" in result.output


def test_cli_serves_without_browser(out, monkeypatch):
    """`explore --no-browser` prints the URL and never calls webbrowser.open (serving stubbed out)."""
    import webbrowser

    from stacembed.web import server as server_module

    opened, served = [], []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url))
    monkeypatch.setattr(server_module.ExplorerServer, "serve_forever", lambda self: served.append(self.url))
    result = CliRunner().invoke(main, ["explore", str(out), "--no-browser", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert served and served[0].startswith("http://127.0.0.1:") and served[0] in result.output
    assert opened == []
    result = CliRunner().invoke(main, ["explore", str(out), "--port", "0"])
    assert result.exit_code == 0 and opened == [served[1]]


# -- the page in a browser ------------------------------------------------------------------------

def _browser():
    """playwright's sync API and the chromium path, or a skip (a failure under STACEMBED_REQUIRE_BROWSER)."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the playwright Python package (the `test` extra)")
    if not Path(CHROMIUM).is_file():
        missing.append(f"chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("STACEMBED_REQUIRE_BROWSER"):
            pytest.fail(reason + " (STACEMBED_REQUIRE_BROWSER is set)")
        pytest.skip(reason)
    return sync_playwright



@contextlib.contextmanager
def _page(sync_playwright, url: str):
    """A headless Chromium page at ``url``; on the way out, no console or page error may have
    occurred and no request may have left the server."""
    errors, outside = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: request.url.startswith(url) or outside.append(request.url))
            page.goto(url)
            yield page
        finally:
            browser.close()
    assert errors == [], errors
    assert outside == [], f"the page requested outside the server: {outside}"

def test_page_in_browser(server, out):
    sync_playwright = _browser()
    lon, lat, _ = chip_centre(out)
    expected = similar(out, Query.from_point(lon, lat), k=10).to_pylist()
    with _page(sync_playwright, server.url) as page:
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        # One image overlay per item, each its thumbnail, loaded.
        overlays = page.locator("img.leaflet-image-layer")
        assert overlays.count() == ITEMS
        sources = sorted(overlays.evaluate_all("els => els.map(e => new URL(e.src).pathname)"))
        assert sources == sorted(f"/api/thumbnail/{item}" for item in
                                 (f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)))
        page.wait_for_function("[...document.querySelectorAll('img.leaflet-image-layer')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)

        # A real click at the chip's centre.
        x, y = page.evaluate("([lat, lon]) => { const m = window.stacembedExplore.map;"
                             " const p = m.latLngToContainerPoint([lat, lon]);"
                             " const r = m.getContainer().getBoundingClientRect();"
                             " return [r.left + p.x, r.top + p.y]; }", [lat, lon])
        page.mouse.click(x, y)
        page.wait_for_selector("body[data-state=result]", timeout=30_000)
        rows = page.locator("#results li")
        assert rows.count() == len(expected)
        listed = rows.evaluate_all("els => els.map(e => [+e.dataset.rank, e.dataset.item,"
                                   " +e.dataset.row, +e.dataset.col, e.querySelector('.sim').textContent])")
        assert [row[:4] for row in listed] == \
            [[e["rank"], e["item"], e["chip_row"], e["chip_col"]] for e in expected]
        assert [float(row[4]) for row in listed] == pytest.approx([e["similarity"] for e in expected], abs=1e-4)
        assert page.locator("path.leaflet-interactive").count() >= len(expected)  # the outlines

        # A list entry zooms the map to its chip.
        zoom = page.evaluate("window.stacembedExplore.map.getZoom()")
        rows.nth(3).click()
        page.wait_for_function(f"window.stacembedExplore.map.getZoom() > {zoom}", timeout=10_000)
        centre = page.evaluate("(() => { const c = window.stacembedExplore.map.getCenter();"
                               " return [c.lng, c.lat]; })()")
        footprint = shapely.from_wkb(expected[3]["geometry"])
        assert footprint.buffer(0.002).covers(shapely.Point(*centre))
        assert "selected" in rows.nth(3).get_attribute("class")


# -- cluster and change layers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def layered(out, tmp_path_factory):
    """A copy of the run with a cluster and a change collection in its own --out; one class map
    has a nodata pixel (the sample's items are covered by chips)."""
    import rasterio

    from stacembed.analysis.change import change_catalog
    from stacembed.analysis.cluster import NODATA, cluster_catalog

    copy = tmp_path_factory.mktemp("layered") / "out"
    shutil.copytree(out, copy)
    cluster_catalog(copy, k=3, seed=0, out=copy, progress=False)
    change_catalog(copy, before="L7-olinda-r0c1", after="L7-olinda-r0c1", out=copy, progress=False)
    path = copy / "clusters-k3" / "L7-olinda-r0c0" / "L7-olinda-r0c0.tif"
    with rasterio.open(path) as src:
        profile, data, colormap = src.profile, src.read(), src.colormap(1)
    data[0, 0, 0] = NODATA
    profile.update(driver="GTiff")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.write_colormap(1, colormap)
    return copy


@pytest.fixture(scope="module")
def layered_server(layered):
    yield from _serving(layered)


def _png(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    return np.asarray(image)


def test_layers_listed(layered_server, layered):
    status, content_type, body = get(layered_server, "/api/layers")
    assert status == 200 and content_type == "application/json"
    layers = json.loads(body)
    found = sorted((layer["kind"], layer["collection"], layer["id"], layer["label"]) for layer in layers)
    assert found == [("change", "change", "L7-olinda-r0c1--L7-olinda-r0c1", "change")] + \
        [("cluster", "clusters-k3", f"L7-olinda-r{r}c{c}", "clusters k3") for r in (0, 1) for c in (0, 1)]
    for layer in layers:
        item = json.loads((layered / layer["collection"] / layer["id"] / f"{layer['id']}.json").read_text())
        assert layer["bbox"] == item["bbox"]
        assert layer["image"] == f"/api/render/{layer['collection']}/{layer['id']}.png"


def test_no_layers_without_analyses(server):
    assert json.loads(get(server, "/api/layers")[2]) == []


def test_class_map_rendered_in_its_colours(layered_server, layered):
    import numpy as np
    import rasterio

    for r in (0, 1):
        for c in (0, 1):
            item = f"L7-olinda-r{r}c{c}"
            status, content_type, body = get(layered_server, f"/api/render/clusters-k3/{item}.png")
            assert status == 200 and content_type == "image/png"
            rgba = _png(body)
            with rasterio.open(layered / "clusters-k3" / item / f"{item}.tif") as src:
                classes, colormap, nodata = src.read(1), src.colormap(1), src.nodata
            assert rgba.shape == (*classes.shape, 4)
            expected = np.array([[colormap[v] if v != nodata else (0, 0, 0, 0) for v in row] for row in classes])
            chips = classes != nodata
            assert (rgba[chips] == expected[chips]).all()
            assert (rgba[~chips][:, 3] == 0).all()
            assert (rgba[chips][:, 3] == 255).all()
            assert (not chips.all()) == (item == "L7-olinda-r0c0")


def test_change_map_rendered(layered_server, layered):
    import numpy as np
    import rasterio

    item = "L7-olinda-r0c1--L7-olinda-r0c1"
    status, _, body = get(layered_server, f"/api/render/change/{item}.png")
    assert status == 200
    rgba = _png(body)
    with rasterio.open(layered / "change" / item / f"{item}.tif") as src:
        distances = src.read(1)
    assert rgba.shape == (*distances.shape, 4)
    valid = ~np.isnan(distances)
    assert (rgba[..., 3] == valid * 255).all() and valid.any()


@pytest.mark.parametrize("path", [
    "/api/render/clusters-k3/no-such-item.png", "/api/render/no-such/L7-olinda-r0c0.png",
    "/api/render/clusters-k3/L7-olinda-r0c0", "/api/render/clusters-k3/L7-olinda-r0c0.tif",
    "/api/render/clusters-k3/..%2fclusters-k3%2fL7-olinda-r0c0%2fL7-olinda-r0c0.png",
    "/api/render/landsat-etm-sample-stacembed-demo-landsat/L7-olinda-r0c0.png",  # an embedding item
    "/api/render/", "/api/render/clusters-k3/%2fetc%2fpasswd.png",
])
def test_bad_render_paths_are_404_json(layered_server, path):
    status, message = get_error(layered_server, path)
    assert status == 404, message


def test_layers_in_browser(layered_server):
    sync_playwright = _browser()
    with _page(sync_playwright, layered_server.url) as page:
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        names = page.locator(".leaflet-control-layers-overlays label").all_inner_texts()
        assert [name.strip() for name in names] == \
            ["Quicklooks", "Item outlines", "Similar chips", "change", "clusters k3"]
        # Off at first: only the quicklooks are drawn.
        assert page.locator("img.leaflet-image-layer").count() == ITEMS
        for name, count in (("clusters k3", ITEMS), ("change", 1)):
            page.locator(".leaflet-control-layers-overlays label", has_text=name).locator("input").check()
            kind = "change" if name == "change" else "cluster"
            assert page.locator(f"img.stacembed-{kind}").count() == count
        page.wait_for_function("[...document.querySelectorAll('img.leaflet-image-layer')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
        sources = sorted(page.locator("img.stacembed-cluster").evaluate_all(
            "els => els.map(e => new URL(e.src).pathname)"))
        assert sources == sorted(f"/api/render/clusters-k3/L7-olinda-r{r}c{c}.png" for r in (0, 1) for c in (0, 1))
