"""`stacembed explore`: a local web server and map page over an embeddings catalog, offline.

The page (``static/index.html``, ``app.js``, ``app.css``) draws each embedding item's quicklook
(its ``thumbnail`` PNG) as a Leaflet image overlay at the item's WGS84 bbox, on a plain
background: no base map tiles, no CDN; Leaflet is vendored under ``static/vendor/leaflet``. The
PNG is on the item's native CRS grid, so in lon/lat it is placed approximately (exact for a
north-up grid in a lon/lat CRS; otherwise stretched to the bbox): good enough for a quicklook.
A click on the map asks ``/api/similar`` for the chips most like the one under the point.

Endpoints (GET only):

- ``/`` the page; ``/static/<path>`` its files (only files under ``static/``).
- ``/api/items`` GeoJSON FeatureCollection of the embedding items: bbox polygon, ``id``,
  ``collection``, ``datetime``, ``bbox`` and ``thumbnail`` (its URL here, or null).
- ``/api/thumbnail/<item>`` the item's thumbnail PNG.
- ``/api/layers`` the catalog's ``stacembed cluster`` and ``stacembed change`` items (in
  collections beside the embeddings, e.g. ``--out`` the embeddings' own directory): a JSON list
  of ``{kind: "cluster"|"change", collection, id, label, bbox (WGS84), image}``.
- ``/api/render/<collection>/<item>.png`` such an item's COG as an RGBA PNG: a class map in its
  colour table, transparent at nodata; a change map on a fixed ramp over [0, max] ([0, 1] when
  the max is 0), transparent where NaN. Rendered on request (at most ``MAX_RENDER`` pixels a side).
- ``/api/similar?lon=..&lat=..&k=..`` the ``k`` (default 10, at most ``MAX_K``) chips most like
  the chip under the point (``Query.from_point``, ``similar``), as a GeoJSON FeatureCollection
  of chip footprints with ``rank``, ``similarity``, ``id``, ``item``, ``collection``,
  ``source_item``, ``chip_row``, ``chip_col``, ``datetime``; ``query`` names the query chip.

Errors are JSON ``{"error": "<one line>"}`` with a 4xx status (5xx for the unexpected). Paths
are never built from request text: item ids are looked up among the catalog's items, static
paths must resolve under ``static/``, and a thumbnail (a layer's COG) is served (rendered) only
when its asset is a local ``.png`` (``.tif``) file inside the catalog's directory.

The server is the standard library's ``http.server.ThreadingHTTPServer``: a single-user tool on
loopback needs no more, and it adds no dependency (starlette/uvicorn are test-only here). It
binds to 127.0.0.1 by default; it has no authentication, so bind elsewhere only on a trusted
network.
"""

from __future__ import annotations

import io
import json
import logging
import math
import webbrowser
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
import pystac
import shapely
import shapely.geometry

from ..embeddings import EmbeddingCatalog, _embedding_hrefs, is_url, open_embeddings
from ..errors import StacembedError

log = logging.getLogger("stacembed")

STATIC = Path(__file__).parent / "static"
DEFAULT_K = 10
MAX_K = 200
THUMBNAIL = "thumbnail"
CLASS_ASSET, CHANGE_ASSET = "classes", "change"  # stacembed.analysis.cluster / .change
MAX_RENDER = 2048
# The change ramp (distance 0 -> max): dark blue, teal, green, yellow (viridis-like stops).
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".png": "image/png", ".json": "application/json",
    ".md": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8",
}


class RequestError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Explorer:
    """What the server knows of one catalog: its embedding items, opened once."""

    def __init__(self, catalog_href: str | Path):
        self.catalog: EmbeddingCatalog = open_embeddings(catalog_href)
        self.items = {item.id: item for item in self.catalog}
        href = self.catalog.href
        self.root = None if is_url(href) else Path(href).resolve().parent
        self.layers = self._find_layers()

    def thumbnail_path(self, item_id: str) -> Path | None:
        """The item's thumbnail PNG when it is a local file inside the catalog's directory."""
        item = self.items.get(item_id)
        return self._local_asset(item.stac_item, THUMBNAIL, (".png",)) if item else None

    def _local_asset(self, stac_item: pystac.Item, key: str, suffixes: tuple[str, ...]) -> Path | None:
        asset = stac_item.assets.get(key)
        if asset is None or self.root is None:
            return None
        href = asset.get_absolute_href()
        if not href or is_url(href) or href.startswith("file:"):
            return None
        path = Path(href).resolve()
        if path.suffix.lower() not in suffixes or not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def _find_layers(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The cluster and change items of the catalog, by (collection, item id); none when the
        catalog is remote or cannot be read again."""
        if self.root is None:
            return {}
        try:
            stac = pystac.read_file(self.catalog.href)
            candidates = [] if isinstance(stac, pystac.Item) else stac.get_items(recursive=True)
            found = {}
            for item in candidates:
                kind = _layer_kind(item)
                bbox = _wgs84_bbox(item.bbox)
                if kind is None or bbox is None or item.collection_id is None:
                    continue
                path = self._local_asset(item, CLASS_ASSET if kind == "cluster" else CHANGE_ASSET, (".tif", ".tiff"))
                if path is None:
                    continue
                collection = item.collection_id
                label = collection.replace("-", " ") if kind == "cluster" or collection.startswith("change") \
                    else f"change {collection}"
                found[(collection, item.id)] = {
                    "kind": kind, "collection": collection, "id": item.id, "label": label, "bbox": bbox,
                    "image": f"/api/render/{quote(collection, safe='')}/{quote(item.id, safe='')}.png",
                    "path": path,
                }
            return found
        except Exception as exc:  # the embeddings were read; layers are extra
            log.warning("explore: no cluster/change layers: %s", _one_line(exc))
            return {}

    def layers_json(self) -> list[dict[str, Any]]:
        return [{key: value for key, value in layer.items() if key != "path"} for layer in self.layers.values()]

    def render(self, collection: str, item_id: str) -> bytes:
        """The layer's COG as an RGBA PNG (see the module's description)."""
        import rasterio
        from PIL import Image

        layer = self.layers.get((collection, item_id))
        if layer is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no cluster or change item {item_id!r} in {collection!r}")
        with rasterio.open(layer["path"]) as src:
            scale = max(src.height, src.width) / MAX_RENDER
            shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 \
                else (src.height, src.width)
            data = src.read(1, out_shape=shape)
            if layer["kind"] == "cluster":
                lut = np.zeros((256, 4), dtype=np.uint8)
                try:
                    for value, colour in src.colormap(1).items():
                        lut[value] = colour
                except ValueError:  # no colour table: grey levels
                    lut[:, :3] = np.arange(256, dtype=np.uint8)[:, None]
                    lut[:, 3] = 255
                if src.nodata is not None:
                    lut[int(src.nodata), 3] = 0
                rgba = lut[data.astype(np.uint8)]
            else:
                valid = np.isfinite(data)
                if src.nodata is not None and not np.isnan(src.nodata):
                    valid &= data != src.nodata
                top = float(data[valid].max()) if valid.any() else 0.0
                top = top if top > 0 else 1.0
                t = np.clip(np.where(valid, data, 0) / top, 0, 1) * (len(RAMP) - 1)
                stops = np.arange(len(RAMP))
                rgba = np.zeros((*data.shape, 4), dtype=np.uint8)
                for band in range(3):
                    rgba[..., band] = np.round(np.interp(t, stops, RAMP[:, band])).astype(np.uint8)
                rgba[..., 3] = np.where(valid, 255, 0)
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
        return buffer.getvalue()

    def items_geojson(self) -> dict[str, Any]:
        features = []
        for item in self.catalog:
            bbox = item.bbox
            if not bbox or len(bbox) < 4:
                continue
            west, south, east, north = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else bbox
            features.append({
                "type": "Feature",
                "id": item.id,
                "geometry": shapely.geometry.mapping(shapely.box(west, south, east, north)),
                "properties": {
                    "id": item.id,
                    "collection": item.collection_id,
                    "datetime": _iso(item.datetime),
                    "bbox": [west, south, east, north],
                    "thumbnail": f"/api/thumbnail/{quote(item.id, safe='')}"
                    if self.thumbnail_path(item.id) else None,
                },
            })
        return {"type": "FeatureCollection", "features": features}

    def similar_geojson(self, lon: float, lat: float, k: int) -> dict[str, Any]:
        from ..analysis.similar import Query, search_metadata, similar

        table = similar(self.catalog, Query.from_point(lon, lat), k)
        meta = search_metadata(table)
        shapes = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
        features = []
        for row, shape in zip(table.drop_columns(["geometry"]).to_pylist(), shapes, strict=True):
            properties = {key: _iso(value) if isinstance(value, datetime) else value for key, value in row.items()}
            properties["similarity"] = float(properties["similarity"])
            features.append({"type": "Feature", "id": properties["id"],
                             "geometry": shapely.geometry.mapping(shape), "properties": properties})
        return {"type": "FeatureCollection", "query": {"point": [lon, lat], "chips": meta.get("positive", [])},
                "features": features}


class ExplorerHandler(BaseHTTPRequestHandler):
    """GET handler; ``server.explorer`` is the ``Explorer``."""

    server_version = "stacembed-explore"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            self._route(urlsplit(self.path))
        except RequestError as exc:
            self._json({"error": str(exc)}, exc.status)
        except StacembedError as exc:
            self._json({"error": _one_line(exc)}, HTTPStatus.BAD_REQUEST)
        except Exception as exc:  # one line to the page, the traceback to the log
            log.exception("explore: %s failed", self.path)
            self._json({"error": f"internal error: {_one_line(exc)}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_POST(self) -> None:  # noqa: N802
        self._json({"error": "only GET is supported"}, HTTPStatus.METHOD_NOT_ALLOWED)

    def _route(self, url) -> None:
        explorer: Explorer = self.server.explorer
        path = url.path
        if path in ("/", "/index.html"):
            self._file(STATIC / "index.html")
        elif path.startswith("/static/"):
            self._file(_static_file(unquote(path[len("/static/"):])))
        elif path == "/api/items":
            self._json(explorer.items_geojson())
        elif path.startswith("/api/thumbnail/"):
            item_id = unquote(path[len("/api/thumbnail/"):])
            if item_id not in explorer.items:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no embedding item {item_id!r} in the catalog")
            found = explorer.thumbnail_path(item_id)
            if found is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"item {item_id!r} has no local thumbnail PNG")
            self._file(found)
        elif path == "/api/layers":
            self._json(explorer.layers_json())
        elif path.startswith("/api/render/"):
            rest = path[len("/api/render/"):]
            collection, _, name = rest.partition("/")
            if not name.endswith(".png"):
                raise RequestError(HTTPStatus.NOT_FOUND, f"not found: {path}")
            self._bytes(explorer.render(unquote(collection), unquote(name[:-len(".png")])), "image/png")
        elif path == "/api/similar":
            lon, lat, k = _similar_params(parse_qs(url.query))
            self._json(explorer.similar_geojson(lon, lat, k))
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"not found: {path}")

    def _file(self, path: Path) -> None:
        self._bytes(path.read_bytes(), CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    def _bytes(self, data: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, value: Any, status: int = HTTPStatus.OK) -> None:
        data = json.dumps(value, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        log.debug("explore: " + format, *args)


class ExplorerServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that holds its ``Explorer``; ``url`` is where it listens."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str, port: int):
        self.explorer = explorer
        super().__init__((host, port), ExplorerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def make_server(catalog_href: str | Path, host: str = "127.0.0.1", port: int = 0) -> ExplorerServer:
    """A server for ``catalog_href`` (a catalog, collection or item JSON, or a run's ``--out``), bound
    to ``host``:``port`` (0: any free port; see ``.url``) and not yet serving: call
    ``serve_forever()`` (in a thread, for tests) and ``shutdown()``/``server_close()``."""
    explorer = Explorer(catalog_href)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("explore: listening on %s, not loopback: anyone who can reach it can read the catalog", host)
    return ExplorerServer(explorer, host, port)


def serve(catalog_href: str | Path, host: str = "127.0.0.1", port: int = 0, *, open_browser: bool = True,
          echo: Callable[[str], Any] = print) -> None:
    """Serve ``catalog_href`` until interrupted (Ctrl-C); ``echo`` the page's URL, and open it in a
    browser (``webbrowser.open``) unless ``open_browser`` is false."""
    server = make_server(catalog_href, host, port)
    try:
        echo(f"stacembed explore: {len(server.explorer.items)} items of {server.explorer.catalog.href} "
             f"at {server.url} (Ctrl-C stops)")
        if open_browser:
            webbrowser.open(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _static_file(relative: str) -> Path:
    root = STATIC.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RequestError(HTTPStatus.NOT_FOUND, f"no static file {relative!r}")
    return path


def _similar_params(query: dict[str, list[str]]) -> tuple[float, float, int]:
    def one(name: str, default: str | None = None) -> str:
        values = query.get(name)
        if not values:
            if default is None:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"missing parameter {name}")
            return default
        return values[0]

    try:
        lon, lat = float(one("lon")), float(one("lat"))
        k = int(one("k", str(DEFAULT_K)))
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "lon and lat must be numbers, k a whole number") from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"lon={lon:g}, lat={lat:g} is not a WGS84 point")
    if not 1 <= k <= MAX_K:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"k must be between 1 and {MAX_K}; got {k}")
    return lon, lat, k


def _layer_kind(item: pystac.Item) -> str | None:
    """``cluster`` for a class map item of ``stacembed cluster``, ``change`` for a change map of
    ``stacembed change``, else None (an embedding item, or anything else)."""
    if _embedding_hrefs(item):
        return None
    classes = item.assets.get(CLASS_ASSET)
    if classes is not None and "classification:classes" in classes.extra_fields:
        return "cluster"
    if CHANGE_ASSET in item.assets:
        return "change"
    return None


def _wgs84_bbox(bbox: list[float] | None) -> list[float] | None:
    if not bbox or len(bbox) not in (4, 6):
        return None
    return [bbox[0], bbox[1], bbox[3], bbox[4]] if len(bbox) == 6 else list(bbox)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
