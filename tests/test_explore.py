"""`stacembed explore` (``stacembed.web``): the endpoints over HTTP, and the page in headless Chromium.

A run of the bundled sample catalog with random weights (4 items, 36 chips, on a UTM grid:
EPSG:31985); expected neighbours come from ``similar()`` called directly, and where a drawn image
puts a chip is computed with pyproj, independently of the server's warp. The same catalog is also
served over HTTP (``range_http``). The browser test uses Debian's chromium
(``/usr/bin/chromium``) through PyPI's playwright, without ``playwright install``; it skips when
either is missing, unless ``STACEMBED_REQUIRE_BROWSER`` is set (CI), where it fails instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from range_http import loopback_environment
from range_http import serve as serve_directory
from rasterio.warp import transform_bounds

from stacembed import RunConfig, run
from stacembed.analysis.similar import Query, similar
from stacembed.cli import main
from stacembed.web import make_server, render
from stacembed.web.server import STATIC

CHROMIUM = os.environ.get("STACEMBED_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ITEMS = 4
INSIDE = (0.05, 0.5, 0.95)  # where in a raster's pixel (a fraction of its side) it is looked for when drawn


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "out"
    run(RunConfig(out=out, weights="random", progress=False))
    return out


@contextlib.contextmanager
def running(catalog):
    """``make_server`` on a free port, in a thread, until the block ends."""
    server = make_server(catalog, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def server(out):
    with running(out) as server:
        yield server


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


def png_rgba(data: bytes) -> np.ndarray:
    """A PNG's (height, width, 4) pixels; it must be RGBA."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    return np.asarray(image)


def drawn(server, overlay) -> np.ndarray:
    """The pixels of an overlay's (``{image, bounds}``) PNG."""
    status, content_type, body = get(server, overlay["image"])
    assert status == 200 and content_type == "image/png", body
    return png_rgba(body)


def assert_placed(overlay, rgba: np.ndarray, raster: Path, expected) -> None:
    """Every pixel of ``raster`` is drawn ``expected(row, col)`` (RGBA) where pyproj puts it in the
    image (its centre, and points a twentieth of a pixel in from its corners); the bounds are the
    raster's in lon/lat; the image is bounded in size."""
    with rasterio.open(raster) as src:
        crs, transform, shape, raster_bounds = src.crs, src.transform, src.shape, src.bounds
    assert overlay["bounds"] == pytest.approx(transform_bounds(crs, "EPSG:4326", *raster_bounds), abs=1e-9)
    assert max(rgba.shape[:2]) == min(render.MAX_SIDE, max(render.MIN_SIDE, *shape))
    west, south, east, north = overlay["bounds"]
    (left, right), (bottom, top) = Transformer.from_crs(4326, 3857, always_xy=True).transform([west, east],
                                                                                              [south, north])
    to_mercator = Transformer.from_crs(crs.to_wkt(), 3857, always_xy=True)
    height, width = rgba.shape[:2]
    for row, col, dy, dx in itertools.product(range(shape[0]), range(shape[1]), INSIDE, INSIDE):
        x, y = to_mercator.transform(*(transform * (col + dx, row + dy)))
        pixel = int((top - y) / (top - bottom) * height), int((x - left) / (right - left) * width)
        assert tuple(rgba[pixel]) == tuple(expected(row, col)), (raster.name, row, col, dy, dx)


def item_file(out: Path, item: str, suffix: str) -> Path:
    return next(out.glob(f"*/{item}/{item}{suffix}"))


# -- HTTP ---------------------------------------------------------------------------------------

def test_items(server, out):
    status, content_type, body = get(server, "/api/items")
    assert status == 200 and content_type == "application/json"
    features = json.loads(body)["features"]
    assert len(features) == ITEMS
    for feature in features:
        props = feature["properties"]
        item = json.loads(item_file(out, props["id"], ".json").read_text())
        assert props["bbox"] == item["bbox"]
        when = item["properties"]["datetime"] or item["properties"]["start_datetime"]  # the item's, or its start
        assert props["datetime"][:19] == when[:19]
        assert props["quicklook"]["image"] == f"/api/quicklook/{props['id']}.png"


def test_quicklooks_reprojected(server, out):
    """Each quicklook is its overview COG (on the UTM grid) warped to Web Mercator: every chip's
    colour lands where pyproj puts the chip's centre, and the bounds are the COG's."""
    for feature in json.loads(get(server, "/api/items")[2])["features"]:
        overview = item_file(out, feature["id"], ".overview.tif")
        with rasterio.open(overview) as src:
            assert src.crs.to_epsg() == 31985 and src.count == 4
            colours = src.read()
        rgba = drawn(server, feature["properties"]["quicklook"])
        assert_placed(feature["properties"]["quicklook"], rgba, overview,
                      lambda row, col, colours=colours: colours[:, row, col])
        assert rgba[..., 3].any() and not rgba[..., 3].all()  # transparent outside the rotated grid


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
    "/static/vendor/../../server.py", "/static/", "/api/quicklook/..%2f..%2fcatalog.json.png",
    "/api/quicklook/%2fetc%2fpasswd.png", "/api/quicklook/no-such-item.png", "/api/quicklook/L7-olinda-r0c0",
    "/api/quicklook/", "/api/nothing", "/../../etc/passwd",
])
def test_bad_paths_are_404_json(server, path):
    status, message = get_error(server, path)
    assert status == 404, message


def test_quicklook_assets_outside_catalog_are_refused(out, tmp_path):
    """An item whose overview and thumbnail point outside the catalog's directory has no
    quicklook; one without an overview gets its thumbnail PNG stretched to its bbox."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    item_path = item_file(copy, "L7-olinda-r0c0", ".json")
    item = json.loads(item_path.read_text())
    for key, suffix in (("overview", ".overview.tif"), ("thumbnail", ".thumbnail.png")):
        shutil.copy(item_file(copy, "L7-olinda-r0c0", suffix), outside / f"secret{suffix}")
        item["assets"][key]["href"] = str(outside / f"secret{suffix}")
    item_path.write_text(json.dumps(item))
    item_path = item_file(copy, "L7-olinda-r0c1", ".json")
    item = json.loads(item_path.read_text())
    del item["assets"]["overview"]
    item_path.write_text(json.dumps(item))
    with running(copy) as server:
        features = {f["id"]: f["properties"] for f in json.loads(get(server, "/api/items")[2])["features"]}
        assert features["L7-olinda-r0c0"]["quicklook"] is None and features["L7-olinda-r1c0"]["quicklook"]
        status, message = get_error(server, "/api/quicklook/L7-olinda-r0c0.png")
        assert status == 404 and "no overview or thumbnail" in message
        stretched = features["L7-olinda-r0c1"]
        assert stretched["quicklook"]["bounds"] == pytest.approx(stretched["bbox"], abs=1e-9)
        rgba = drawn(server, stretched["quicklook"])
        thumbnail = png_rgba(item_file(copy, "L7-olinda-r0c1", ".thumbnail.png").read_bytes())
        assert {tuple(c) for c in rgba.reshape(-1, 4)} == {tuple(c) for c in thumbnail.reshape(-1, 4)}


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
        assert sources == sorted(f"/api/quicklook/L7-olinda-r{r}c{c}.png" for r in (0, 1) for c in (0, 1))
        page.wait_for_function("[...document.querySelectorAll('img.leaflet-image-layer')]"
                               ".every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
        # Each item's outline is an upright rectangle (its bbox, left as it was by fitting the view).
        outlines = page.evaluate("[...document.querySelectorAll('path')].map(p => p.getAttribute('d'))")
        assert len(outlines) == ITEMS
        for outline in outlines:
            (x0, y0), (x1, y1), (x2, y2), (x3, y3) = (point.split() for point in outline[1:-1].split("L"))
            assert x0 == x1 and y1 == y2 and x2 == x3 and y3 == y0, outline

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

CLUSTERS = [("cluster", "clusters-k3", f"L7-olinda-r{r}c{c}", "clusters k3") for r in (0, 1) for c in (0, 1)]
CHANGE = ("change", "change", "L7-olinda-r0c1--L7-olinda-r0c1", "change")


@pytest.fixture(scope="module")
def layered(out, tmp_path_factory):
    """A copy of the run with a cluster and a change collection in its own --out; one class map
    is rewritten with neighbouring chips in different classes, and a nodata chip (the sample's
    items are covered by chips)."""
    from stacembed.analysis.change import change_catalog
    from stacembed.analysis.cluster import NODATA, cluster_catalog

    copy = tmp_path_factory.mktemp("layered") / "out"
    shutil.copytree(out, copy)
    cluster_catalog(copy, k=3, seed=0, out=copy, progress=False)
    change_catalog(copy, before="L7-olinda-r0c1", after="L7-olinda-r0c1", out=copy, progress=False)
    path = copy / "clusters-k3" / "L7-olinda-r0c0" / "L7-olinda-r0c0.tif"
    with rasterio.open(path) as src:
        profile, data, colormap = src.profile, src.read(), src.colormap(1)
    rows, cols = np.indices(data.shape[1:])
    data[0] = (rows + cols) % 3
    data[0, 0, 0] = NODATA
    profile.update(driver="GTiff")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.write_colormap(1, colormap)
    return copy


@pytest.fixture(scope="module")
def layered_server(layered):
    with running(layered) as server:
        yield server


def layer_file(catalog: Path, layer) -> Path:
    return catalog / layer["collection"] / layer["id"] / f"{layer['id']}.tif"


def listed(server) -> list:
    status, content_type, body = get(server, "/api/layers")
    assert status == 200 and content_type == "application/json"
    return sorted(json.loads(body), key=lambda layer: (layer["kind"], layer["id"]))


def test_layers_listed(layered_server, layered):
    layers = listed(layered_server)
    assert [(layer["kind"], layer["collection"], layer["id"], layer["label"]) for layer in layers] == \
        [CHANGE, *CLUSTERS]
    for layer in layers:
        assert layer["image"] == f"/api/render/{layer['collection']}/{layer['id']}.png"
        with rasterio.open(layer_file(layered, layer)) as src:
            assert src.crs.to_epsg() == 31985
            assert layer["bounds"] == pytest.approx(transform_bounds(src.crs, "EPSG:4326", *src.bounds), abs=1e-9)


def test_no_layers_without_analyses(server):
    assert json.loads(get(server, "/api/layers")[2]) == []


def test_class_map_reprojected_in_its_colours(layered_server, layered):
    """Each chip's class colour (transparent at nodata) lands where pyproj puts the chip's centre."""
    for layer in listed(layered_server)[1:]:
        with rasterio.open(layer_file(layered, layer)) as src:
            classes, colormap, nodata = src.read(1), src.colormap(1), src.nodata
        if layer["id"] == "L7-olinda-r0c0":  # the rewritten map: three classes and a nodata chip
            assert set(np.unique(classes)) == {0, 1, 2, nodata}

        def expected(row, col, classes=classes, colormap=colormap, nodata=nodata):
            return (0, 0, 0, 0) if classes[row, col] == nodata else colormap[classes[row, col]]

        assert_placed(layer, drawn(layered_server, layer), layer_file(layered, layer), expected)


def test_change_map_reprojected(layered_server, layered):
    """An item against itself: distance 0 everywhere (the ramp's first colour), transparent at NaN."""
    layer = listed(layered_server)[0]
    with rasterio.open(layer_file(layered, layer)) as src:
        distances = src.read(1)
    assert np.nanmax(distances) == 0 and np.isfinite(distances).any()

    def expected(row, col):
        return (*render.RAMP[0].astype(int), 255) if np.isfinite(distances[row, col]) else (0, 0, 0, 0)

    assert_placed(layer, drawn(layered_server, layer), layer_file(layered, layer), expected)


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


def test_layers_found_after_start(out, tmp_path, monkeypatch):
    """A cluster run written into the catalog while the server is up is listed on the next call,
    for a local catalog and one over HTTP alike."""
    from stacembed.analysis.change import change_catalog
    from stacembed.analysis.cluster import cluster_catalog

    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    loopback_environment(monkeypatch)
    with serve_directory(copy) as (base, _), running(copy) as local, running(f"{base}/catalog.json") as remote:
        assert listed(local) == listed(remote) == []
        cluster_catalog(copy, k=2, seed=0, out=copy, progress=False)
        expected = [("clusters-k2", f"L7-olinda-r{r}c{c}") for r in (0, 1) for c in (0, 1)]
        for server in (local, remote):
            layers = listed(server)
            assert [(layer["collection"], layer["id"]) for layer in layers] == expected
            assert get(server, layers[0]["image"])[:2] == (200, "image/png")
        change_catalog(copy, before="L7-olinda-r1c1", after="L7-olinda-r1c1", out=copy, progress=False)
        assert len(listed(local)) == len(listed(remote)) == len(expected) + 1


# -- a catalog over HTTP --------------------------------------------------------------------------

def test_http_catalog_drawn_as_local(layered, layered_server, monkeypatch):
    """Served over HTTP, the catalog lists the same layers and quicklooks, drawn byte for byte as
    from disk, its COGs read by GDAL in byte ranges."""
    loopback_environment(monkeypatch)
    with serve_directory(layered) as (base, requests), running(f"{base}/catalog.json") as server:
        layers = listed(server)
        assert layers == listed(layered_server) and len(layers) == len(CLUSTERS) + 1
        features = json.loads(get(server, "/api/items")[2])["features"]
        assert features == json.loads(get(layered_server, "/api/items")[2])["features"]
        overlays = [*layers, *(feature["properties"]["quicklook"] for feature in features)]
        for overlay in overlays:
            assert get(server, overlay["image"])[2] == get(layered_server, overlay["image"])[2]
    assert any(path.endswith(".tif") and ranged for _, path, ranged in requests)


def test_http_errors_hold_no_credentials(layered, tmp_path, monkeypatch, caplog):
    """Credentials in the catalog's URL go with its requests, never into an error or a log line."""
    copy = tmp_path / "copy"
    shutil.copytree(layered, copy)
    change = copy / "change" / CHANGE[2] / f"{CHANGE[2]}.tif"
    change.unlink()
    loopback_environment(monkeypatch)
    with serve_directory(copy) as (base, _), \
            running(base.replace("http://", "http://user:s3cret-word@") + "/catalog.json") as server:
        assert [layer["id"] for layer in listed(server)] == [layer[2] for layer in CLUSTERS]  # not the change
        status, message = get_error(server, f"/api/render/change/{CHANGE[2]}.png")
        assert status == 400 and "cannot read" in message and "***@127.0.0.1" in message
    assert "s3cret" not in message and "s3cret" not in caplog.text and "***@127.0.0.1" in caplog.text


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
