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
- ``/api/similar?lon=..&lat=..&k=..`` the ``k`` (default 10, at most ``MAX_K``) chips most like
  the chip under the point (``Query.from_point``, ``similar``), as a GeoJSON FeatureCollection
  of chip footprints with ``rank``, ``similarity``, ``id``, ``item``, ``collection``,
  ``source_item``, ``chip_row``, ``chip_col``, ``datetime``; ``query`` names the query chip.

Errors are JSON ``{"error": "<one line>"}`` with a 4xx status (5xx for the unexpected). Paths
are never built from request text: item ids are looked up among the catalog's items, static
paths must resolve under ``static/``, and a thumbnail is served only when its asset is a local
``.png`` file inside the catalog's directory.

The server is the standard library's ``http.server.ThreadingHTTPServer``: a single-user tool on
loopback needs no more, and it adds no dependency (starlette/uvicorn are test-only here). It
binds to 127.0.0.1 by default; it has no authentication, so bind elsewhere only on a trusted
network.
"""

from __future__ import annotations

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

import shapely
import shapely.geometry

from ..embeddings import EmbeddingCatalog, is_url, open_embeddings
from ..errors import StacembedError

log = logging.getLogger("stacembed")

STATIC = Path(__file__).parent / "static"
DEFAULT_K = 10
MAX_K = 200
THUMBNAIL = "thumbnail"
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

    def thumbnail_path(self, item_id: str) -> Path | None:
        """The item's thumbnail PNG when it is a local file inside the catalog's directory."""
        item = self.items.get(item_id)
        asset = item.stac_item.assets.get(THUMBNAIL) if item else None
        if asset is None or self.root is None:
            return None
        href = asset.get_absolute_href()
        if not href or is_url(href) or href.startswith("file:"):
            return None
        path = Path(href).resolve()
        if path.suffix.lower() != ".png" or not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

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
        elif path == "/api/similar":
            lon, lat, k = _similar_params(parse_qs(url.query))
            self._json(explorer.similar_geojson(lon, lat, k))
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"not found: {path}")

    def _file(self, path: Path) -> None:
        data = path.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
