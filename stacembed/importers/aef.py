"""AlphaEarth Foundations annual Satellite Embedding COGs as a stacembed embeddings catalog.

The dataset (Google and Google DeepMind, CC-BY-4.0; gs://alphaearth_foundations, copied to
Source Cooperative as tge-labs/aef) is a set of COGs, one per UTM tile and year: 64 int8 bands
``A00``..``A63``, 10 m pixels, every pixel an embedding of unit length once de-quantized as
``sign(q) * (|q| / 127.5)**2``, with -128 for masked pixels (the files' nodata). Google's
originals are stored bottom-up (positive y resolution); Source Cooperative adds a ``.vrt``
beside each that presents them north-up.

``import_aef`` writes one embedding item per file (``emb:type: pixel``: a pixel is a chip),
with ``emb:quantization`` ``signed-square`` so that every reader of ``embeddings`` de-quantizes
as the dataset says. Without ``bbox`` the items reference the files where they are (they must
be north-up: a ``.vrt``, or a file already flipped); with ``bbox`` (lon/lat) each file's pixels
under it are copied, values untouched and north-up, into a COG in the output tree, a strip of
rows at a time (memory bounded by ``STRIP_BYTES``, not by the box), and their quicklooks drawn
(``analysis.quicklook``; files referenced in place get theirs from ``stacembed quicklook``). The year comes from
``year`` or from the path (the dataset's ``<year>/<zone>/<file>`` layout). ``index`` picks the
files from the dataset's own index (``aef_index.parquet``: footprint, year and path per file).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..analysis.derived import DerivedOutput, file_asset, local_href, projection_fields
from ..config import Bbox, parse_bbox
from ..errors import ConfigError, ReadError
from ..grid import Grid, raster_errors
from ..stac import COG, EMBEDDINGS, FILE, ITEM_ASSETS, PROJECTION
from ..writers.cog import STRIP_BYTES, block_size, copy_as_cog
from ..writers.quantize import NODATA, SIGNED_SQUARE

log = logging.getLogger("stacembed")

DIMENSIONS = 64
SCALE = 127.5
COLLECTION = "alphaearth-annual"
MODEL = "alphaearth-foundations"
LICENSE = "CC-BY-4.0"
ATTRIBUTION = "The AlphaEarth Foundations Satellite Embedding dataset is produced by Google and Google DeepMind."
QUANTIZATION = {"method": SIGNED_SQUARE, "original_dtype": "float32", "quantized_dtype": "int8", "scale": [SCALE]}
EDGE = 1e-6
YEAR = re.compile(r"(?:19|20)\d\d")


@dataclass(frozen=True)
class AefImport:
    """What ``import_aef`` wrote: the root catalog, the items, and the files it skipped (no pixel in the box)."""

    catalog: Path
    items: list[str]
    skipped: list[str]


@dataclass(frozen=True)
class _Source:
    """One AEF file: where it is, its year, and its north-up grid (``bottom_up``: stored flipped)."""

    href: str
    year: int
    grid: Grid
    bottom_up: bool
    descriptions: tuple[str | None, ...]

    @property
    def name(self) -> str:
        stem = os.path.basename(self.href.rstrip("/")).split("?")[0]
        return re.sub(r"\.(tiff?|vrt)$", "", stem, flags=re.I)

    @property
    def item_id(self) -> str:
        return f"{self.name}-{self.year}"


_ASSET_TITLE = "AlphaEarth embeddings (COG, 64 int8 bands A00..A63, signed-square quantization)"
# The Embeddings extension asks each collection for its model and its source data.
LINKS = [{"rel": "emb:model", "href": "https://arxiv.org/abs/2507.22291", "type": "text/html",
          "title": "AlphaEarth Foundations (Brown et al. 2025)"},
         {"rel": "emb:source-data", "href": "https://developers.google.com/earth-engine/guides/aef_on_gcs_readme",
          "type": "text/html", "title": "AlphaEarth Foundations annual Satellite Embedding COGs"}]
PROVIDERS = [{"name": "Google and Google DeepMind", "roles": ["producer", "licensor"],
              "url": "https://developers.google.com/earth-engine/datasets/catalog/GOOGLE_SATELLITE_EMBEDDING_V1_ANNUAL"}]


def import_aef(sources: Sequence[str], out: str | Path, *, bbox: Bbox | str | None = None, year: int | None = None,
               index: str | None = None, collection_id: str = COLLECTION) -> AefImport:
    """Describe the AEF files ``sources`` (paths or URLs) as collection ``collection_id`` under ``out``;
    with ``index`` (the dataset's ``aef_index.parquet``, or a copy), also the files it lists
    whose footprint meets ``bbox`` (needed then) in ``year`` (if given)."""
    box = parse_bbox(bbox) if bbox is not None else None
    output = DerivedOutput(Path(out), collection_id)
    output.check_free()
    opened = _opened(_sources(sources, box, year, index), box, year)
    written, skipped = [], []
    with output.writing():
        for source in opened:
            window = _window(source, box) if box is not None else Window(0, 0, source.grid.width, source.grid.height)
            if window is None:
                log.warning("%s: no pixel in the box; skipped", source.href)
                skipped.append(source.href)
                continue
            written.append(_add_item(output, source, window, copy=box is not None))
        if not written:
            raise ConfigError(f"none of the {len(opened)} file(s) has a pixel in the box {list(box)}")
        gsds = {source.grid.resolution[0] for source in opened}
        output.write_collection(
            title="AlphaEarth Foundations annual satellite embeddings",
            description=f"AlphaEarth Foundations annual Satellite Embedding COGs (64 dimensions, 10 m), described "
                        f"for stacembed. {ATTRIBUTION}",
            extensions=[EMBEDDINGS, PROJECTION, FILE, ITEM_ASSETS],
            item_assets={"embeddings": {"type": COG, "roles": ["data", "embeddings"], "title": _ASSET_TITLE}},
            extra={"license": LICENSE, "providers": PROVIDERS, "emb:type": "pixel", "emb:dimensions": DIMENSIONS,
                   "data_type": "int8", **({"gsd": gsds.pop()} if len(gsds) == 1 else {})},
            links=LINKS,
        )
    if box is not None:  # the copies are the box's pixels: their quicklooks (the map page's) cost little
        from ..analysis.quicklook import write_quicklooks

        write_quicklooks(output.layout.collection_file)
    return AefImport(output.catalog_file, written, skipped)


def _sources(sources: Sequence[str], box: Bbox | None, year: int | None, index: str | None) -> list[str]:
    """The files given, and those of ``index`` under ``box`` (in ``year``)."""
    if index is not None:
        if box is None:
            raise ConfigError("--index needs --bbox: the box whose files to import")
        sources = [*sources, *indexed_files(index, box, year)]
    if not sources:
        raise ConfigError("no AlphaEarth file given" if index is None else
                          f"the index {index} lists no file that meets the box {list(box)}"
                          f"{f' in {year}' if year is not None else ''}")
    return list(sources)


def _opened(sources: Sequence[str], box: Bbox | None, year: int | None) -> list[_Source]:
    """Each file checked and read; one item id per file; north-up unless a box is copied."""
    opened, ids = [], {}
    for href in sources:
        source = _open(href, year)
        if source.item_id in ids:
            raise ConfigError(f"{ids[source.item_id]} and {href} would both be item {source.item_id!r}: "
                              "give each file once (a .tiff or its .vrt)")
        if box is None and source.bottom_up:
            raise ConfigError(f"{href} is stored bottom-up (positive y resolution): reference its north-up "
                              ".vrt instead (Source Cooperative ships one beside each file), or give --bbox to "
                              "copy the pixels of a box north-up")
        ids[source.item_id] = href
        opened.append(source)
    return opened


def indexed_files(index: str, box: Bbox, year: int | None = None) -> list[str]:
    """The ``path`` of each row of the AEF index (GeoParquet: ``geometry`` in lon/lat, ``year``,
    ``path``) whose footprint meets the lon/lat ``box``, in ``year`` if given; read a row group
    at a time."""
    import pyarrow.parquet as pq

    from ..embeddings import local_copy, read_errors

    found: list[str] = []
    area = shapely.box(*box)
    with read_errors(index), local_copy(index) as path:
        parquet = pq.ParquetFile(path)
        missing = {"geometry", "year", "path"} - set(parquet.schema_arrow.names)
        if missing:
            raise ReadError(f"{index} is not an AlphaEarth index: no column {', '.join(sorted(missing))} "
                            "(expected the dataset's aef_index.parquet: geometry, year, path)")
        for batch in parquet.iter_batches(columns=["geometry", "year", "path"], batch_size=16_384):
            footprints = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            keep = shapely.intersects(footprints, area)
            if year is not None:
                keep &= batch.column("year").to_numpy(zero_copy_only=False) == year
            found += [p for p, kept in zip(batch.column("path").to_pylist(), keep, strict=True) if kept]
    return found


def _open(href: str, year: int | None) -> _Source:
    """Check that ``href`` is an AEF file (64 int8 bands, a CRS, an unrotated grid) and read its grid."""
    with raster_errors(href, "open AlphaEarth file"), rasterio.open(href) as ds:
        if ds.count != DIMENSIONS or ds.dtypes[0] != "int8":
            raise ReadError(f"{href} is not an AlphaEarth embeddings file: {ds.count} band(s) of {ds.dtypes[0]} "
                            f"(expected {DIMENSIONS} int8 bands A00..A63)")
        t = ds.transform
        if ds.crs is None or t.b != 0 or t.d != 0 or t.a <= 0:
            raise ReadError(f"{href} has no CRS or a rotated grid; AlphaEarth files are on unrotated UTM grids")
        bottom_up = t.e > 0
        top = t.f + ds.height * t.e if bottom_up else t.f
        grid = Grid(ds.crs, Affine(t.a, 0.0, t.c, 0.0, -abs(t.e), top), ds.width, ds.height)
        descriptions = ds.descriptions
    return _Source(href, _year(href, year), grid, bottom_up, descriptions)


def _year(href: str, year: int | None) -> int:
    """``year``, else the last directory of ``href`` named as a year (the dataset's layout is
    ``<year>/<zone>/<file>``; the file's own name is not looked at)."""
    if year is not None:
        return year
    directories = href.split("?")[0].replace("\\", "/").split("/")[:-1]
    found = [name for name in directories if YEAR.fullmatch(name)]
    if not found:
        raise ConfigError(f"no year in {href} (the dataset's layout is <year>/<zone>/<file>); give --year")
    return int(found[-1])


def _window(source: _Source, box: Bbox) -> Window | None:
    """The pixels (north-up rows) of ``source`` that the lon/lat ``box`` touches; None when none."""
    grid = source.grid
    west, south, east, north = transform_bounds("OGC:CRS84", grid.crs, *box, densify_pts=21)
    (left, top), (right, bottom) = ~grid.transform * (west, north), ~grid.transform * (east, south)
    # Within a millionth of a pixel an edge is on the pixel boundary (projection round-off).
    col0, col1 = max(0, math.floor(left + EDGE)), min(grid.width, math.ceil(right - EDGE))
    row0, row1 = max(0, math.floor(top + EDGE)), min(grid.height, math.ceil(bottom - EDGE))
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _add_item(output: DerivedOutput, source: _Source, window: Window, *, copy: bool) -> str:
    item_id = source.item_id
    grid = Grid(source.grid.crs, source.grid.transform * Affine.translation(window.col_off, window.row_off),
                int(window.width), int(window.height))
    if copy:
        path = output.asset_path(item_id, "geotiff")
        _copy_window(source, window, grid, path)
        asset = file_asset(path, media_type=COG, roles=["data", "embeddings"], title=_ASSET_TITLE,
                           **projection_fields(grid))
        links = [("derived_from", source.href, f"AlphaEarth file {source.name}", COG)]
    else:
        vrt = source.href.split("?")[0].lower().endswith(".vrt")
        asset = {"href": local_href(source.href), "type": "application/xml" if vrt else COG,
                 "roles": ["data", "embeddings"], "title": _ASSET_TITLE, **projection_fields(grid)}
        links = []
    footprint = grid.outline()
    properties = {
        "datetime": None, "start_datetime": f"{source.year}-01-01T00:00:00Z",  # a calendar year, as Earth Engine's
        "end_datetime": f"{source.year}-12-31T23:59:59Z",
        "gsd": grid.resolution[0], "license": LICENSE,
        "emb:quantization": QUANTIZATION,  # emb:type, emb:dimensions and data_type are the collection's
        "emb:runtime_parameters": {"mlm:name": MODEL, "pooling": "none"},
        "processing:lineage": ("AlphaEarth Foundations annual embedding, " +
                               (f"pixels {_describe(window)} copied unchanged" if copy else "referenced in place")),
    }
    output.add_item(item_id, geometry=shapely.geometry.mapping(footprint), bbox=list(footprint.bounds),
                    properties=properties, extensions=[EMBEDDINGS, PROJECTION, FILE], assets={"embeddings": asset},
                    sources=(), links=links)
    return item_id


def _copy_window(source: _Source, window: Window, grid: Grid, path: Path) -> None:
    """The pixels of ``window`` (north-up rows) as a COG on ``grid``: values, nodata and band names
    as the source has them; a strip of rows at a time."""
    width, height = int(window.width), int(window.height)
    rows = max(1, STRIP_BYTES // (width * DIMENSIONS))
    scratch = path.with_name(path.name + ".strips.tif")
    profile = {"driver": "GTiff", "width": width, "height": height, "count": DIMENSIONS, "dtype": "int8",
               "nodata": NODATA, "crs": grid.crs, "transform": grid.transform, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "bigtiff": "IF_SAFER"}
    try:
        with raster_errors(source.href, "read AlphaEarth file"), rasterio.open(source.href) as src, \
                rasterio.open(scratch, "w", **profile) as dst:
            for top, count in _strips(height, rows):
                dst.write(_read_rows(src, source, window, top, count), window=Window(0, top, width, count))
            for band, text in enumerate(source.descriptions, start=1):
                if text:
                    dst.set_band_description(band, text)
            dst.update_tags(AEF_SOURCE=source.href, AEF_YEAR=str(source.year))
        size = max(width, height)
        copy_as_cog(scratch, path, size=size, blocksize=block_size(size, DIMENSIONS, 1), overview_resampling="nearest")
    finally:
        scratch.unlink(missing_ok=True)


def _strips(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for top in range(0, height, rows):
        yield top, min(rows, height - top)


def _read_rows(src: rasterio.DatasetReader, source: _Source, window: Window, top: int, count: int) -> np.ndarray:
    """North-up rows ``top``..``top + count`` of ``window``: read as stored, flipped when stored bottom-up."""
    first = int(window.row_off) + top
    if source.bottom_up:
        stored = source.grid.height - first - count
        return src.read(window=Window(window.col_off, stored, window.width, count))[:, ::-1, :]
    return src.read(window=Window(window.col_off, first, window.width, count))


def _describe(window: Window) -> str:
    return (f"cols {int(window.col_off)}..{int(window.col_off + window.width) - 1}, "
            f"rows {int(window.row_off)}..{int(window.row_off + window.height) - 1} (north-up)")
