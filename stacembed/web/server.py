"""`stacembed explore`: a local web server and map page over an embeddings catalog, offline.

The page (``static/index.html``, ``app.js``, ``app.css``) draws each embedding item's quicklook,
and the catalog's cluster and change maps, as Leaflet image overlays on a plain background: no
base map tiles, no CDN; Leaflet is vendored under ``static/vendor/leaflet``. Every image is
reprojected here into Web Mercator (``render``), so that it sits where it is whatever its CRS. A
click on the map asks ``/api/similar`` for the chips most like the one under the point.

Endpoints (GET only):

- ``/`` the page; ``/static/<path>`` its files (only files under ``static/``).
- ``/api/items`` GeoJSON FeatureCollection of the embedding items: bbox polygon, ``id``,
  ``collection``, ``datetime``, ``bbox`` and ``quicklook`` (``{image, bounds}``: its PNG's URL
  here and the lon/lat bounds of that image, or null).
- ``/api/quicklook/<item>.png`` the item's ``overview`` COG (PCA as RGB with alpha) as drawn; an
  item without one gets its ``thumbnail`` PNG stretched to its bbox (placed approximately).
- ``/api/layers`` the catalog's ``stacembed cluster`` and ``stacembed change`` items (in
  collections beside the embeddings, e.g. ``--out`` the embeddings' own directory): a JSON list
  of ``{kind: "cluster"|"change", collection, id, label, image, bounds}``. They are found again
  whenever the catalog's document has changed (a run linked a new collection into it), so a
  run written while the server is up shows on the next call.
- ``/api/render/<collection>/<item>.png`` such an item's COG as drawn: a class map in its colour
  table, a change map on a fixed ramp (``render``).
- ``/api/similar?lon=..&lat=..&k=..`` the ``k`` (default 10, at most ``MAX_K``) chips most like
  the chip under the point (``Query.from_point``, ``similar``), as a GeoJSON FeatureCollection
  of chip footprints with ``rank``, ``similarity``, ``id``, ``item``, ``collection``,
  ``source_item``, ``chip_row``, ``chip_col``, ``datetime``; ``query`` names the query chip.

The catalog may be local or served over http(s); its rasters are read by GDAL (``render``).
Errors are JSON ``{"error": "<one line>"}`` (URLs redacted) with a 4xx status (5xx for the
unexpected). Paths are never built from request text: item ids are looked up among the
catalog's items, static paths must resolve under ``static/``, and an asset is drawn only when
its href is an http(s) URL or a file inside the catalog's directory.

The server is the standard library's ``http.server.ThreadingHTTPServer``: a single-user tool on
loopback needs no more, and it adds no dependency (starlette/uvicorn are test-only here). It
binds to 127.0.0.1 by default; it has no authentication, so bind elsewhere only on a trusted
network.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pystac
import shapely
import shapely.geometry

from ..access import Access, redact_text
from ..embeddings import EmbeddingCatalog, EmbeddingItem, _embedding_hrefs, is_url, open_embeddings
from ..errors import ConfigError, StacembedError
from .render import Source, png, raster_bounds

log = logging.getLogger("stacembed")

STATIC = Path(__file__).parent / "static"
DEFAULT_K = 10
MAX_K = 200
THUMBNAIL, OVERVIEW = "thumbnail", "overview"  # stacembed.analysis.quicklook
ASSETS = {"cluster": "classes", "change": "change"}  # the drawn asset of each kind (analysis.cluster / .change)
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


@dataclass(frozen=True)
class Layer:
    """A cluster or change item of the catalog, drawn from ``source``."""

    kind: str
    collection: str
    id: str
    label: str
    source: Source


class Explorer:
    """What the server knows of one catalog: its embedding items (read once) and its layers."""

    def __init__(self, catalog_href: str | Path):
        self.catalog: EmbeddingCatalog = open_embeddings(catalog_href)
        unplaced = [item.id for item in self.catalog if not item.placed]
        if len(unplaced) == len(self.catalog):
            raise ConfigError(f"explore draws embeddings on a map, and no item of {redact_text(self.catalog.href)} "
                              "has georeferencing (pixel coordinates only); stacembed similar and cluster take them")
        if unplaced:
            log.warning("explore: %d item(s) without georeferencing are not drawn (%s)", len(unplaced),
                        ", ".join(unplaced[:5]) + (", ..." if len(unplaced) > 5 else ""))
        href = self.catalog.href
        self.root = None if is_url(href) else Path(href).resolve().parent
        self.stac_io = Access().stac_io(href)
        self.quicklooks = {item.id: self._quicklook(item) for item in self.catalog}
        self._lock = threading.Lock()
        self._document: str | None = None  # the catalog's text when ``_layers`` were found
        self._layers: dict[tuple[str, str], Layer] = {}

    def quicklook_png(self, item_id: str) -> bytes:
        if item_id not in self.quicklooks:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no embedding item {item_id!r} in the catalog")
        source = self.quicklooks[item_id]
        if source is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"item {item_id!r} has no overview or thumbnail to draw")
        return png(source)

    def render(self, collection: str, item_id: str) -> bytes:
        layer = self.layers().get((collection, item_id))
        if layer is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no cluster or change item {item_id!r} in {collection!r}")
        return png(layer.source)

    def layers(self) -> dict[tuple[str, str], Layer]:
        """The catalog's cluster and change items by (collection, item id); found again when the
        catalog's document is not what it was (one small read a call); none when unreadable."""
        with self._lock:
            try:
                document = self.stac_io.read_text(self.catalog.href)
                if document != self._document:
                    self._layers, self._document = self._find_layers(document), document
            except Exception as exc:  # the embeddings were read; layers are extra
                log.warning("explore: no cluster/change layers: %s", _one_line(exc))
                self._layers, self._document = {}, None
            return self._layers

    def _find_layers(self, document: str) -> dict[tuple[str, str], Layer]:
        stac = pystac.read_dict(json.loads(document), href=self.catalog.href, stac_io=self.stac_io)
        items = [] if isinstance(stac, pystac.Item) else stac.get_items(recursive=True)
        layers = (self._layer(item) for item in items)
        return {(layer.collection, layer.id): layer for layer in layers if layer is not None}

    def _layer(self, item: pystac.Item) -> Layer | None:
        kind = _layer_kind(item)
        href = self._href(item, ASSETS[kind]) if kind else None
        collection = item.collection_id
        if href is None or collection is None:
            return None
        label = collection.replace("-", " ") if kind == "cluster" or collection.startswith("change") \
            else f"change {collection}"
        return Layer(kind, collection, item.id, label, Source(href, kind))

    def _quicklook(self, item: EmbeddingItem) -> Source | None:
        """The item's overview COG; without one, its thumbnail PNG, which has no georeferencing,
        stretched to the item's bbox (exact for a north-up lon/lat grid only: approximate)."""
        overview = self._href(item.stac_item, OVERVIEW)
        if overview is not None:
            return Source(overview, "quicklook")
        thumbnail, bbox = self._href(item.stac_item, THUMBNAIL), _wgs84_bbox(item.bbox)
        return Source(thumbnail, "quicklook", tuple(bbox)) if thumbnail and bbox else None

    def _href(self, item: pystac.Item, key: str) -> str | None:
        """The asset's absolute href when it may be drawn: an http(s) URL, or a file inside the
        catalog's directory (a catalog may name any path; no other file is read)."""
        asset = item.assets.get(key)
        href = asset.get_absolute_href() if asset is not None else None
        if not href or is_url(href):
            return href or None
        path = Path(href).resolve()
        inside = self.root is not None and path.is_relative_to(self.root) and path.is_file()
        return str(path) if inside else None

    def _overlay(self, source: Source | None, image: str) -> dict[str, Any] | None:
        """``{image, bounds}`` for the page, or None (with a warning) when the source is unreadable."""
        if source is None:
            return None
        try:
            return {"image": image, "bounds": list(raster_bounds(source))}
        except StacembedError as exc:
            log.warning("explore: not drawn: %s", _one_line(exc))
            return None

    def layers_json(self) -> list[dict[str, Any]]:
        found = []
        for layer in self.layers().values():
            image = f"/api/render/{quote(layer.collection, safe='')}/{quote(layer.id, safe='')}.png"
            overlay = self._overlay(layer.source, image)
            if overlay is not None:
                found.append({"kind": layer.kind, "collection": layer.collection, "id": layer.id,
                              "label": layer.label, **overlay})
        return found

    def items_geojson(self) -> dict[str, Any]:
        features = []
        for item in self.catalog:
            bbox = _wgs84_bbox(item.bbox)
            if bbox is None:
                continue
            features.append({
                "type": "Feature",
                "id": item.id,
                "geometry": shapely.geometry.mapping(shapely.box(*bbox)),
                "properties": {
                    "id": item.id,
                    "collection": item.collection_id,
                    "datetime": _iso(item.datetime),
                    "bbox": bbox,
                    "quicklook": self._overlay(self.quicklooks[item.id],
                                               f"/api/quicklook/{quote(item.id, safe='')}.png"),
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
        elif path.startswith("/api/quicklook/"):
            self._bytes(explorer.quicklook_png(_png_name(path, path[len("/api/quicklook/"):])), "image/png")
        elif path == "/api/layers":
            self._json(explorer.layers_json())
        elif path.startswith("/api/render/"):
            collection, _, name = path[len("/api/render/"):].partition("/")
            self._bytes(explorer.render(unquote(collection), _png_name(path, name)), "image/png")
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
    catalog = server.explorer.catalog
    try:
        echo(f"stacembed explore: {len(catalog)} items of {redact_text(catalog.href)} at {server.url} (Ctrl-C stops)")
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


def _png_name(path: str, name: str) -> str:
    """The id in ``name``, ``<id>.png`` (percent-decoded); else the ``path`` asked for is not found."""
    if not name.endswith(".png"):
        raise RequestError(HTTPStatus.NOT_FOUND, f"not found: {path}")
    return unquote(name[:-len(".png")])


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
    classes = item.assets.get(ASSETS["cluster"])
    if classes is not None and "classification:classes" in classes.extra_fields:
        return "cluster"
    if ASSETS["change"] in item.assets:
        return "change"
    return None


def _wgs84_bbox(bbox: list[float] | None) -> list[float] | None:
    if not bbox or len(bbox) not in (4, 6):
        return None
    return [bbox[0], bbox[1], bbox[3], bbox[4]] if len(bbox) == 6 else list(bbox)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(redact_text(str(exc)).split())
    return text or type(exc).__name__
