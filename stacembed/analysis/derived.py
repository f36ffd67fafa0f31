"""What the clusters and change analyses share: the grid and model of an embedding item, and
writing a derived product (COGs, items, a collection) into an output tree as ``stacembed run`` does.

- ``embedding_grid(item)`` / ``item_grid(item)``: the chip grid (CRS, transform, shape) of an
  item's embeddings: the COG's own header, or, for a GeoParquet-only item, rebuilt as
  ``ChipGrid.embedding_grid`` places it, from the source item's ``proj:shape``/``proj:transform``
  (kept as columns) checked against the chips' native bounds, else from the chips alone.
- ``model_of(item)`` / ``one_model(items)``: which embedding space the vectors are in (model,
  weights, pooling, layer, dimensions); vectors of two spaces are never compared.
- ``DerivedOutput``: one output collection under ``--out``, written whole into a temporary
  directory and renamed into place (``layout.atomic_path``) under the run's lock on ``--out``
  (``layout.exclusive``), then the root catalog (``catalog.write_root_catalog``) lists it
  beside whatever else ``--out`` holds (it may be the embeddings' own ``--out``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from .._version import __version__
from ..embeddings import EmbeddingItem, local_copy, read_errors
from ..errors import StacembedError
from ..grid import Grid
from ..layout import CATALOG, OutputLayout, atomic_path, exclusive, multihash_sha256, safe_name, write_json
from ..stac import CATALOG_TITLE, STAC_VERSION
from ..writers.cog import copy_as_cog

log = logging.getLogger("stacembed")

# The transform of two grids may differ by float rounding (a grid rebuilt from GeoParquet
# bounds): within this fraction of a pixel they are the same grid.
GRID_TOLERANCE = 1e-6


class AnalysisError(StacembedError):
    """The embeddings cannot be analysed as asked: mixed models, grids that differ, too few chips."""


class NoChipError(AnalysisError):
    """An item kept no chip, and has no COG to tell its grid."""


# -- the grid and the model of an embedding item ------------------------------------------------

def embedding_grid(item: EmbeddingItem) -> Grid:
    """The grid of ``item``'s embeddings: one pixel per chip position (or per patch, dense).

    From the COG's header when the item has one (the ground truth); otherwise rebuilt from its
    GeoParquet (see ``item_grid``).
    """
    return item_grid(item)[0]


def item_grid(item: EmbeddingItem) -> tuple[Grid, bool]:
    """``(grid, exact)``: the grid of ``item``'s embeddings, and whether its shape is known.

    A GeoParquet-only item's grid is rebuilt from its chips, each of which records its native
    bounds and pixel window (``native_*``, ``col_off``/``row_off``, ``chip_row``/``chip_col``),
    placed as ``ChipGrid.embedding_grid`` places the COG's pixels. The number of chip rows and
    columns comes from the source item's ``proj:shape`` and ``proj:transform`` (kept as columns)
    when they describe the grid the chips were cut from; otherwise the grid ends at the last chip
    kept (``exact`` False: a COG would also cover trailing positions without a chip).
    """
    if "geotiff" in item.hrefs:
        href = item.hrefs["geotiff"]
        with read_errors(href), rasterio.open(href) as ds:
            return Grid(ds.crs, ds.transform, ds.width, ds.height), True
    return _grid_from_geoparquet(item)


def _grid_from_geoparquet(item: EmbeddingItem) -> tuple[Grid, bool]:
    href = item._href("geoparquet")
    columns = ["chip_row", "chip_col", "col_off", "row_off", "width", "height",
               "native_xmin", "native_ymin", "native_xmax", "native_ymax"]
    with read_errors(href), local_copy(href) as path:
        file = pq.ParquetFile(path)
        geo = json.loads((file.schema_arrow.metadata or {}).get(b"geo", b"{}"))
        table = file.read(columns=columns)
        kept = [name for name in ("proj:transform", "proj:shape") if name in file.schema_arrow.names]
        source = file.read_row_group(0, columns=kept).slice(0, 1).to_pylist() if kept and table.num_rows else [{}]
    if table.num_rows == 0:
        raise NoChipError(f"item {item.id!r} kept no chip and has no COG: its chip grid is not known")
    column = geo.get("columns", {}).get("native_geometry", {})
    native_crs = column.get("crs")
    if native_crs is None and "crs" not in column:
        raise AnalysisError(f"item {item.id!r}: its GeoParquet states no CRS of native_geometry; "
                            "rerun stacembed with --format geotiff too")
    from pyproj import CRS as ProjCRS

    from ..chips import ChipGrid

    # "crs": null: an input without georeferencing, footprints in pixel/line coordinates (y down).
    crs = CRS.from_wkt(ProjCRS.from_json_dict(native_crs).to_wkt()) if native_crs is not None else None
    data = {name: table.column(name).to_numpy() for name in columns}
    # The chip nearest the top-left corner gives the grid's origin with the least arithmetic.
    first = int(np.lexsort((data["chip_col"], data["chip_row"]))[0])
    size = int(data["width"][first])
    stride = _stride(item, data, first)
    stated = _stated_grid(crs, source[0], data, first)
    if stated is not None:
        return ChipGrid(stated, size, stride).embedding_grid, True
    res_x = (data["native_xmax"][first] - data["native_xmin"][first]) / size
    down = -1 if crs is not None else 1  # rows go south on a map, and up the y axis of pixel coordinates
    res_y = down * (data["native_ymax"][first] - data["native_ymin"][first]) / int(data["height"][first])
    origin_x = data["native_xmin"][first] - data["col_off"][first] * res_x
    origin_y = data["native_ymax" if crs is not None else "native_ymin"][first] - data["row_off"][first] * res_y
    rows, cols = int(data["chip_row"].max()) + 1, int(data["chip_col"].max()) + 1
    chips = ChipGrid(Grid(crs, Affine(res_x, 0.0, origin_x, 0.0, res_y, origin_y), 1, 1), size, stride)
    return Grid(crs, chips.embedding_grid.transform, cols, rows), False


def _stated_grid(crs: CRS | None, source: dict[str, Any], data: dict[str, np.ndarray], first: int) -> Grid | None:
    """The source grid that the source item's ``proj:transform``/``proj:shape`` state, when the
    chips were cut from it (their native bounds lie on it); else None (resampled, or not stated)."""
    try:
        transform = Affine(*[float(v) for v in json.loads(source["proj:transform"])[:6]])
        height, width = (int(v) for v in json.loads(source["proj:shape"])[:2])
    except (KeyError, TypeError, ValueError):
        return None
    if crs is None:  # the source's proj fields describe a grid the chips were not cut from
        return None
    grid = Grid(crs, transform, width, height)
    bounds = grid.windows_bounds(data["col_off"][first], data["row_off"][first], data["width"][first],
                                 data["height"][first])[0]
    native = [data[f"native_{k}"][first] for k in ("xmin", "ymin", "xmax", "ymax")]
    pixel = max(abs(transform.a), abs(transform.e))
    if transform.b or transform.d or not all(math.isclose(a, b, abs_tol=GRID_TOLERANCE * pixel)
                                             for a, b in zip(bounds, native, strict=True)):
        return None
    return grid


def _stride(item: EmbeddingItem, data: dict[str, np.ndarray], first: int) -> int:
    """The chips' step in source pixels: the collection's ``emb:chip_layout``, else the chips'
    own offsets (``col_off = chip_col * stride``)."""
    layout = item.chip_layout or {}
    stride = layout.get("stride")
    if isinstance(stride, list) and stride:
        return int(stride[-1])
    moved = data["chip_col"] > 0
    if moved.any():
        index = int(np.argmax(moved))
        return int(data["col_off"][index] // data["chip_col"][index])
    moved = data["chip_row"] > 0
    if moved.any():
        index = int(np.argmax(moved))
        return int(data["row_off"][index] // data["chip_row"][index])
    return int(data["width"][first])  # one chip: any stride places it the same


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids are one: the same CRS and shape, and transforms equal to within a
    millionth of a pixel (float rounding)."""
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    pixel = max(abs(a.transform.a), abs(a.transform.e))
    return all(math.isclose(x, y, rel_tol=0, abs_tol=GRID_TOLERANCE * pixel)
               for x, y in zip(tuple(a.transform)[:6], tuple(b.transform)[:6], strict=True))


def describe_grid(grid: Grid) -> str:
    t = grid.transform
    crs = "pixel coordinates (no CRS)" if not grid.placed else grid.crs_code if grid.crs.to_epsg() else "a custom CRS"
    return (f"{crs}, {grid.width}x{grid.height} px of "
            f"{abs(t.a):g} x {abs(t.e):g} from ({t.c:.10g}, {t.f:.10g})")


def model_of(item: EmbeddingItem) -> dict[str, Any]:
    """The embedding space of ``item``'s vectors: the model (card name, weights), what was taken
    of its output (pooling, layer) and the dimensions. Items made by one model share it."""
    return model_identity(item.stac_item.properties.get("emb:runtime_parameters") or {}, item.dimensions)


def model_identity(parameters: dict[str, Any], dimensions: int | None) -> dict[str, Any]:
    """The embedding space that a run's ``emb:runtime_parameters`` and dimensions make."""
    return {
        "model": parameters.get("mlm:name"),
        "weights_sha256": parameters.get("weights_sha256"),
        "pooling": parameters.get("pooling") or "default",
        "layer": parameters.get("layer"),
        "dimensions": dimensions,
    }


def describe_model(model: dict[str, Any]) -> str:
    parts = [f"{model.get('dimensions')}-d"]
    if model.get("weights_sha256"):
        parts.append(f"weights {str(model['weights_sha256'])[:12]}")
    if model.get("pooling") not in (None, "default"):
        parts.append(f"{model['pooling']} pooling")
    if model.get("layer") is not None:
        parts.append(f"layer {model['layer']}")
    return f"{model.get('model') or 'an unnamed model'} ({', '.join(parts)})"


def one_model(items: Sequence[EmbeddingItem], what: str) -> dict[str, Any]:
    """The model all ``items`` share; an ``AnalysisError`` naming the models when they differ."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(json.dumps(model_of(item), sort_keys=True), []).append(item.id)
    if len(groups) > 1:
        listed = "; ".join(f"{describe_model(json.loads(key))}: {ids[0]}" + (f" and {len(ids) - 1} more" if
                                                                              len(ids) > 1 else "")
                           for key, ids in groups.items())
        raise AnalysisError(f"{what} holds embeddings of {len(groups)} different models or dimensions ({listed}); "
                            "their vectors cannot be compared: give a catalog, collection or item of one model")
    return json.loads(next(iter(groups)))


def time_range(item: EmbeddingItem) -> tuple[datetime | None, datetime | None]:
    """The instant or range ``item`` covers (``datetime``, else ``start``/``end_datetime``)."""
    common = item.stac_item.common_metadata
    return (item.stac_item.datetime or common.start_datetime, item.stac_item.datetime or common.end_datetime)


def time_properties(item: EmbeddingItem) -> dict[str, Any]:
    """The time fields of ``item``, to be kept by a product derived from it."""
    properties = item.stac_item.properties
    kept = {key: properties[key] for key in ("datetime", "start_datetime", "end_datetime") if key in properties}
    kept.setdefault("datetime", None)
    return kept


def iso(value: datetime | None) -> str | None:
    return pystac.utils.datetime_to_str(value) if value is not None else None


def processing(lineage: str, software: dict[str, str]) -> dict[str, Any]:
    """The processing extension's fields of a derived item."""
    return {
        "processing:software": {"stacembed": __version__, **software},
        "processing:datetime": iso(datetime.now(UTC)),
        "processing:lineage": lineage,
    }


# -- files -------------------------------------------------------------------------------------

def write_cog(path: Path, values: np.ndarray, grid: Grid, *, nodata: float, description: str | Sequence[str],
              colormap: dict[int, tuple[int, int, int, int]] | None = None, tags: dict[str, str] | None = None) -> None:
    """A map on ``grid`` as a Cloud-Optimized GeoTIFF (DEFLATE, with the predictor for its
    type), written atomically: ``values`` (height, width) is one band, (bands, height, width)
    several, each with its ``description``; ``colormap`` becomes the first band's colour table.
    ``values`` is one item's map (a value per chip position), so it is built in memory."""
    bands = values.reshape(-1, grid.height, grid.width)
    descriptions = [description] if isinstance(description, str) else list(description)
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": len(bands),
               "dtype": values.dtype.name, "crs": grid.crs, "transform": grid.transform, "nodata": nodata}
    size = max(grid.width, grid.height)
    with MemoryFile() as memory:
        with memory.open(**profile) as ds:
            ds.write(bands)
            for index, text in enumerate(descriptions, start=1):
                ds.set_band_description(index, text)
            if colormap:
                ds.write_colormap(1, colormap)
            ds.update_tags(SOFTWARE=f"stacembed {__version__}", **(tags or {}))
        with memory.open() as source:
            copy_as_cog(source, path, size=size, blocksize=max(16, min(256, -(-size // 16) * 16)),
                        overview_resampling="nearest")


def projection_fields(grid: Grid) -> dict[str, Any]:
    """Projection v2.0.0 fields of an asset on ``grid``: ``proj:code`` (or the WKT2, for a CRS
    without an EPSG code; null without georeferencing), shape and transform."""
    epsg = grid.crs.to_epsg() if grid.placed else None
    crs = {"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:wkt2": grid.crs.to_wkt()} if grid.placed \
        else {"proj:code": None}
    return {**crs, "proj:shape": [grid.height, grid.width], "proj:transform": list(grid.transform)[:6]}


def file_asset(path: Path, *, media_type: str, roles: list[str], title: str, **fields: Any) -> dict[str, Any]:
    """An asset for the file at ``path`` (linked from beside it), with its file v2.1.0 size and checksum."""
    return {"href": f"./{path.name}", "type": media_type, "roles": roles, "title": title, **fields,
            "file:size": path.stat().st_size, "file:checksum": multihash_sha256(path)}


def catalog_href(catalog: str | Path) -> str:
    """The document ``open_embeddings(catalog)`` read: ``catalog``, or the ``catalog.json`` of a directory."""
    from ..layout import catalog_file

    return str(catalog_file(catalog)) if Path(str(catalog)).is_dir() else str(catalog)


def local_href(href: str) -> str:
    """``href`` as an absolute path when it names a local file (so ``relative_href`` relates it);
    a URL or a GDAL ``/vsi...`` path (``/vsicurl/https://...``) as it is."""
    from urllib.parse import urlparse

    local = len(urlparse(href).scheme) <= 1 and not href.startswith("/vsi")
    return os.path.abspath(href) if local else href


# -- the output collection ---------------------------------------------------------------------

@dataclass
class DerivedOutput:
    """One collection of derived items under ``root`` (``--out``), written as a whole.

    ``writing()`` holds the lock on ``root``, refuses a collection that exists already (a
    derived product is never mixed with another's items), and yields the temporary directory
    the collection is written into; it is renamed into place when the block succeeds, and the
    root catalog is rewritten to list it.
    """

    root: Path
    collection_id: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.layout = OutputLayout(self.root, self.collection_id)
        self.staging: Path | None = None

    def check_free(self) -> None:
        """Refuse an output collection that exists already (checked again when writing starts)."""
        if self.layout.collection_dir.exists():
            raise AnalysisError(f"{self.layout.collection_dir} exists already; use another --out or "
                                "--output-collection (a derived collection is written whole, never mixed)")

    @contextmanager
    def writing(self) -> Iterator[DerivedOutput]:
        from ..catalog import write_root_catalog
        from ..layout import remove_stale_temporaries

        with exclusive(self.root):
            self.check_free()
            remove_stale_temporaries(self.root)
            with atomic_path(self.layout.collection_dir) as tmp:
                tmp.mkdir(parents=True)
                self.staging = tmp
                yield self
            self.staging = None
            write_root_catalog(self.root)

    def item_dir(self, item_id: str) -> Path:
        """Where ``item_id``'s files go while the collection is being written."""
        assert self.staging is not None, "only inside writing()"
        directory = self.staging / safe_name(item_id)
        directory.mkdir(exist_ok=True)
        return directory

    def asset_path(self, item_id: str, fmt: str) -> Path:
        return self.item_dir(item_id) / self.layout.asset_name(item_id, fmt)

    def add_item(self, item_id: str, *, geometry: dict | None, bbox: list[float] | None, properties: dict[str, Any],
                 extensions: Iterable[str], assets: dict[str, dict], sources: Sequence[EmbeddingItem],
                 links: Sequence[tuple[str, ...]] = ()) -> dict:
        """Write ``item_id``'s document (its files are written already) and remember it;
        ``links``: (rel, href, title) of the other JSON documents it links, or (rel, href, title,
        media type) of other files."""
        from ..catalog import canonical_href, relative_href

        final = self.layout.item_file(item_id)  # relative links are made from where it will be
        documents = []
        for source in {item_key(source): source for source in sources}.values():
            href = canonical_href(source.stac_item)
            if href:
                documents.append({"rel": "derived_from", "href": relative_href(local_href(href), final),
                                  "type": "application/geo+json", "title": f"Embeddings {source.id}"})
        extra = [{"rel": rel, "href": relative_href(local_href(href), final),
                  "type": kind[0] if kind else "application/json", "title": title} for rel, href, title, *kind in links]
        titles = {"root": CATALOG_TITLE}
        links = [*documents, *extra, *[{"rel": rel, "href": href, "type": "application/json",
                                        "title": titles.get(rel, self.collection_id)}
                                       for rel, href in self.layout.ITEM_LINKS]]
        document = {
            "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": list(dict.fromkeys(extensions)),
            "id": item_id, "geometry": geometry, "bbox": bbox, "properties": properties, "links": links,
            "assets": assets, "collection": self.collection_id,
        }
        if bbox is None:  # an item without geometry (no georeferencing) has no bbox: STAC wants none, not null
            del document["bbox"]
        write_json(self.item_dir(item_id) / final.name, document)
        self.items.append(document)
        return document

    def write_collection(self, *, title: str, description: str, extensions: Iterable[str],
                         item_assets: dict[str, dict], assets: dict[str, dict] | None = None,
                         derived_from: Sequence[tuple[str, str]] = (), extra: dict[str, Any] | None = None,
                         links: Sequence[dict[str, str]] = ()) -> Path:
        """Write the collection document; ``derived_from``: (href, title) of what it was made from;
        ``links``: other link objects, as they are."""
        from ..catalog import relative_href

        assert self.staging is not None, "only inside writing()"
        final = self.layout.collection_file
        links = [*[{"rel": rel, "href": href, "type": "application/json", "title": CATALOG_TITLE}
                   for rel, href in self.layout.COLLECTION_LINKS], *links]
        links += [{"rel": "derived_from", "href": relative_href(local_href(href), final), "type": "application/json",
                   "title": what} for href, what in derived_from]
        links += [{"rel": "item", "href": self.layout.item_href(item["id"]), "type": "application/geo+json",
                   "title": item["id"]} for item in sorted(self.items, key=lambda d: d["id"])]
        collection = {
            "type": "Collection", "stac_version": STAC_VERSION, "stac_extensions": list(dict.fromkeys(extensions)),
            "id": self.collection_id, "title": title, "description": description, "license": "other",
            "extent": _extent(self.items), **(extra or {}), "item_assets": item_assets, "links": links,
            "assets": assets or {},
        }
        path = self.staging / final.name
        write_json(path, collection)
        return final

    @property
    def catalog_file(self) -> Path:
        return self.root / CATALOG


def _extent(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    boxes = [item["bbox"] for item in items if item.get("bbox")]
    spatial = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[-2] for b in boxes),
                max(b[-1] for b in boxes)] if boxes else [-180.0, -90.0, 180.0, 90.0])
    times = sorted(t for item in items for key in ("datetime", "start_datetime", "end_datetime")
                   if (t := item["properties"].get(key)))
    return {"spatial": {"bbox": [spatial]},
            "temporal": {"interval": [[times[0] if times else None, times[-1] if times else None]]}}


def unique_ids(items: Sequence[EmbeddingItem]) -> dict[str, str]:
    """An output id per input item: its own id, qualified by its collection where two
    collections hold the same id (one output collection holds them all)."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.id] = counts.get(item.id, 0) + 1
    return {item_key(item): item.id if counts[item.id] == 1 else f"{item.collection_id}--{item.id}" for item in items}


def item_key(item: EmbeddingItem) -> str:
    """A key naming ``item`` within a catalog (its collection and id)."""
    return f"{item.collection_id}/{item.id}"
