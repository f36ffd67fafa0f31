"""Write the outputs as STAC: one embeddings item per source item, a collection, a catalog.

Output documents are STAC 1.0.0 because the Embeddings extension v0.0.1 builds on the 1.0.0
core schemas (so pystac, which migrates what it reads to 1.1.0, cannot validate them as its
objects: ``stacembed.validate``). Items declare, and fill, the embeddings, projection v2.0.0,
file v2.1.0 and processing v1.2.0 extensions, plus the extensions of the source fields they
keep; the collection declares embeddings, item-assets v1.0.0 (``item_assets`` is core only
from STAC 1.1) and the card's MLM version (``mlm:input``/``mlm:output`` used).

An input without georeferencing (``grid.Grid.placed`` False) gives items without ``geometry`` and
``bbox`` (null and absent, as STAC allows for items that are not on the map; the source item's own,
linked ``derived_from``, is not taken, since no pixel of the outputs can be put inside it), whose
item and GeoTIFF asset have ``"proj:code": null`` (the projection extension's value for data
without a CRS; ``embeddings.EmbeddingItem.placed`` reads it), the asset ``proj:shape`` and
``proj:transform`` in the source's pixel/line coordinates. A collection whose
items are all unplaced has the whole world as its spatial extent, as STAC has no "unknown".

Every href is relative where its target is local (to the document that holds it, as
``OutputLayout`` places it; ``relative_href``): the tree can be moved, and names no staging
directory. Remote targets keep their URL.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pystac

from ._version import __version__
from .access import redact
from .chips import ChipGrid
from .grid import Grid
from .layout import OutputLayout, catalog_file, multihash_sha256, write_bytes, write_json
from .models import ModelCard
from .models.card import weights_asset
from .stac import (
    CATALOG_TITLE,
    EMBEDDINGS,
    FILE,
    ITEM_ASSETS,
    MEDIA_TYPES,
    MLM,
    PROCESSING,
    PROJECTION,
    STAC_VERSION,
)
from .writers import EmbeddingLayout

# Extensions whose fields stacembed writes (or drops) itself: a source's declaration is not kept.
_OWN_EXTENSIONS = {"embeddings", "projection", "file", "processing", "item-assets"}
# Field prefixes of extensions not named by their prefix, and extensions with unprefixed fields.
_PREFIXES = {"projection": "proj", "scientific": "sci", "sentinel-1": "s1", "sentinel-2": "s2", "sentinel-3": "s3",
             "alternate-assets": "alternate", "pointcloud": "pc", "datacube": "cube", "authentication": "auth"}
_UNPREFIXED = {"timestamps": {"published", "expires", "unpublished"}, "version": {"version", "deprecated"}}
_VERSION = re.compile(r"v\d+(\.\d+)*(-[\w.]+)?")


@dataclass(frozen=True)
class Provenance:
    """How the embeddings were made: model, weights and the parameters that shape them."""

    card: ModelCard
    embedding: EmbeddingLayout
    pretrained: bool
    weights_sha256: str | None
    chip_grid_size: int
    stride: int
    parameters: dict[str, Any]

    def grid_description(self, item_id: str) -> str:
        """Which pixel grid the chips were cut from: the source's own, or an explicit resampling."""
        crs, resolution = self.parameters.get("crs"), self.parameters.get("resolution")
        if not (crs or resolution):
            return f"the native grid of item {item_id!r}"
        target = " at ".join(str(v) for v in (crs, f"{resolution:g} units/px" if resolution else None) if v)
        return f"item {item_id!r} resampled ({self.parameters.get('resampling')}) to {target}"

    def runtime_parameters(self) -> dict[str, Any]:
        return {
            "mlm:name": self.card.name,
            "mlm:architecture": self.card.architecture,
            "mlm:pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            **self.parameters,
        }

    def model_input(self) -> dict[str, Any]:
        """The card's ``mlm:input`` that was used (the first), at the chip size of the run."""
        model_input = copy.deepcopy(self.card.item["properties"]["mlm:input"][0])
        shape = model_input.get("input", {}).get("shape")
        if isinstance(shape, list) and len(shape) >= 2 and list(shape[-2:]) != [self.chip_grid_size] * 2:
            shape[-2:] = [self.chip_grid_size, self.chip_grid_size]
        return model_input

    def model_inputs(self) -> list[dict[str, Any]]:
        """The card's ``mlm:input`` entries that were used: the first; with several modalities,
        every one with bands (each modality's), at the chip size of the run."""
        if "primary_modality" not in self.parameters:
            return [self.model_input()]
        inputs = []
        for entry in self.card.item["properties"]["mlm:input"]:
            if entry.get("bands"):
                entry = copy.deepcopy(entry)
                shape = entry.get("input", {}).get("shape")
                if isinstance(shape, list) and len(shape) >= 2:
                    shape[-2:] = [self.chip_grid_size, self.chip_grid_size]
                inputs.append(entry)
        return inputs

    def modal_lineage(self) -> str:
        """How the other modalities were brought onto the primary's grid, for ``processing:lineage``."""
        resampling = self.parameters.get("modality_resampling") or {}
        if not resampling:
            return ""
        sar = set(self.parameters.get("sar_db") or ())
        parts = [f"{name} ({method if isinstance(method, str) else 'per band'}"
                 f"{', dB' if name in sar else ''})" for name, method in resampling.items()]
        return f"; {', '.join(parts)} warped onto it"

    def model_output(self) -> dict[str, Any]:
        """The card's ``mlm:output`` that was used (the first), or what was taken instead of it
        (``--pooling``, ``--layer``): its name says so, and its shape is the embeddings'."""
        output = copy.deepcopy(self.card.item["properties"]["mlm:output"][0])
        pooling, layer = self.parameters.get("pooling") or "default", self.parameters.get("layer")
        if pooling == "default" and layer is None:
            return output
        taken = ", ".join(part for part in (f"layer {layer}" if layer is not None else None,
                                           f"{pooling} pooling" if pooling != "none" else "patch embeddings") if part)
        dims = ["batch", "embedding", "height", "width"] if self.embedding.dense else ["batch", "embedding"]
        shape = [-1, self.embedding.dimensions, *(self.embedding.patches or ())]
        output.update({
            "name": f"{output.get('name', 'output')} ({taken})",
            "description": f"Taken instead of the card's output {output.get('name')!r}: {taken}.",
            "result": {**output.get("result", {}), "shape": shape, "dim_order": dims},
        })
        return output


def software_versions() -> dict[str, str]:
    """The versions of the software that made the embeddings. timm's comes from its installed
    metadata: importing it to ask (1.2-1.5 s, most of it torchvision) is not worth it for a model
    that does not need it. torch's is its own (``2.14.1+cu130``: the build's CUDA too)."""
    import torch

    try:
        timm = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        timm = "not installed"
    return {"stacembed": __version__, "torch": torch.__version__, "timm": timm}


def asset_key(fmt: str, formats: tuple[str, ...]) -> str:
    """The first requested format is the ``embeddings`` asset; others are ``embeddings-<format>``."""
    return "embeddings" if fmt == formats[0] else f"embeddings-{fmt}"


def relative_href(href: str, document: Path) -> str:
    """``href`` as written into ``document`` (a file of the output tree): relative to the
    document when it names a local file (a path or a ``file:`` URL), else unchanged."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        path = url2pathname(parsed.path)
    elif len(parsed.scheme) > 1:  # a URL (one letter: a Windows drive)
        return href
    else:
        path = href
    if not os.path.isabs(path):
        return href
    relative = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(document.parent))).as_posix()
    return relative if relative.startswith("../") else f"./{relative}"


def output_item(
    sources: list[pystac.Item],
    *,
    item_id: str,
    layout: OutputLayout,
    files: dict[str, Path],
    formats: tuple[str, ...],
    chip_grid: ChipGrid,
    provenance: Provenance,
    properties: dict[str, Any] | None = None,
    keep_href_query: bool = False,
    companions: list[pystac.Item] = (),
) -> dict[str, Any]:
    """The STAC item describing the embeddings of ``sources`` (hrefs relative to the item file,
    as ``layout`` places it).

    ``companions`` are the other modalities' items read with ``sources`` (a model of several
    inputs): linked ``derived_from`` too, but the item's place and time are the sources'.

    One source item, or a time series on one grid (described by its first item, spanning all
    of their times). ``properties`` are what the writers determined (e.g. ``emb:quantization``).
    The source's properties are kept (not its ``proj:`` fields, which describe its own grid, nor
    its ``gsd``: here ``gsd`` is the embeddings' own, stride x pixel size), with the extensions
    that define them declared.
    """
    source = sources[0]
    placed = chip_grid.grid.placed
    extra = properties or {}
    properties = {k: v for k, v in source.properties.items() if not k.startswith("proj:") and k != "gsd"}
    if not placed:  # no CRS (projection extension: null), which readers ask (``EmbeddingItem.placed``)
        properties["proj:code"] = None
    gsd = _gsd(embedding_grid(chip_grid, provenance.embedding))
    if gsd is not None:
        properties["gsd"] = gsd
    properties.update(extra)
    if len(sources) > 1:
        properties.update(_time_span(sources))
    properties.update({
        "processing:software": software_versions(),
        "processing:datetime": pystac.utils.datetime_to_str(datetime.now(UTC)),
        "processing:lineage": (
            f"{chip_grid.size}x{chip_grid.size} px chips every {chip_grid.stride} px on "
            f"{provenance.grid_description(source.id)}"
            f"{'' if placed else ' (no georeferencing: pixel coordinates, no CRS)'}"
            f"{provenance.modal_lineage()}, embedded with model "
            f"{provenance.card.name!r} "
            f"({provenance.card.architecture})"
        ),
        "emb:runtime_parameters": provenance.runtime_parameters(),
    })
    item = pystac.Item(
        id=item_id,
        geometry=source.geometry if placed else None,
        bbox=source.bbox if placed else None,
        datetime=source.datetime if len(sources) == 1 else None,
        properties=properties,
        collection=layout.collection_id,
        stac_extensions=[EMBEDDINGS, PROJECTION, FILE, PROCESSING, *_kept_extensions(source, properties)],
    )
    for fmt in formats:
        href = layout.asset_href(item_id, fmt)
        item.add_asset(asset_key(fmt, formats), _asset(fmt, href, files[fmt], chip_grid, provenance))
    item_file = layout.item_file(item_id)
    for each in [*sources, *companions]:
        href = canonical_href(each, keep_query=keep_href_query)
        if href:
            href = relative_href(href, item_file)
            for rel in ("derived_from", "emb:source-data"):  # STAC's provenance relation, and the extension's
                item.add_link(pystac.Link(rel, href, pystac.MediaType.JSON, f"Source item {each.id}"))
    item.add_link(pystac.Link("emb:model", layout.model_href(provenance.card.name), pystac.MediaType.JSON,
                              provenance.card.name))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    data["stac_version"] = STAC_VERSION
    titles = {"root": CATALOG_TITLE}
    data["links"] += [{"rel": rel, "href": href, "type": "application/json",
                       "title": titles.get(rel, layout.collection_id)} for rel, href in layout.ITEM_LINKS]
    return data


def canonical_href(obj: pystac.STACObject, keep_query: bool = False) -> str | None:
    """Where a source item (or collection) lives for good, credentials removed: its
    ``canonical`` link, else its own href, as ``access.redact`` writes hrefs (no userinfo, no
    query unless ``keep_query``: ``--keep-href-query``).

    A copy (a platform's stage-in, a mirror) names the original with ``canonical`` (STAC best
    practices), and provenance should outlive the copy, which may be a staging directory that
    is gone once the job ends.
    """
    canonical = obj.get_single_link("canonical")
    href = canonical.get_absolute_href() if canonical is not None else obj.get_self_href()
    return redact(href, keep_query) if href else None


def _time_span(sources: list[pystac.Item]) -> dict[str, Any]:
    from .resolve import item_time_range

    ranges = [item_time_range(s) for s in sources]
    return {
        "datetime": None,
        "start_datetime": pystac.utils.datetime_to_str(min(r[0] for r in ranges)),
        "end_datetime": pystac.utils.datetime_to_str(max(r[1] for r in ranges)),
        "stacembed:source_items": [s.id for s in sources],
    }


def _kept_extensions(source: pystac.Item, properties: dict[str, Any]) -> list[str]:
    """The source's extensions that define a property kept in ``properties`` (e.g. eo for
    ``eo:cloud_cover``), recognised by the extension's name in its schema URL."""
    prefixes = {key.split(":", 1)[0] for key in properties if ":" in key}
    kept = []
    for url in dict.fromkeys(source.stac_extensions or ()):
        parts = [part for part in urlparse(url).path.split("/") if part]
        names = [parts[i - 1] for i in range(1, len(parts)) if _VERSION.fullmatch(parts[i])]
        if not names or names[-1] in _OWN_EXTENSIONS:
            continue
        name = names[-1]
        if _PREFIXES.get(name, name) in prefixes or _UNPREFIXED.get(name, set()) & properties.keys():
            kept.append(url)
    return kept


def embedding_grid(chip_grid: ChipGrid, embedding: EmbeddingLayout) -> Grid:
    """The grid of the embeddings: one pixel per chip position, or per patch (dense)."""
    return chip_grid.patch_grid(embedding.patches) if embedding.dense else chip_grid.embedding_grid


def _gsd(grid: Grid) -> float | None:
    """The ground sample distance of ``grid`` in metres (its larger pixel side); None where the
    CRS has no linear unit (a geographic CRS)."""
    from rasterio.errors import CRSError

    try:
        if not grid.placed or not grid.crs.is_projected:
            return None
        _, metres = grid.crs.linear_units_factor
    except CRSError:
        return None
    return float(max(abs(grid.transform.a), abs(grid.transform.e)) * metres)


def _asset_title(fmt: str, dense: bool) -> str:
    if fmt == "geoparquet":
        return "Chip embeddings (GeoParquet, one row per chip)"
    if dense:
        return "Patch embeddings (COG, one pixel per model patch, one band per dimension)"
    return "Chip embeddings (COG, one pixel per chip position, one band per dimension)"


def _asset(fmt: str, href: str, path: Path, chip_grid: ChipGrid, provenance: Provenance) -> pystac.Asset:
    extra: dict[str, Any] = {"file:size": path.stat().st_size, "file:checksum": multihash_sha256(path)}
    if fmt == "geotiff":
        grid = embedding_grid(chip_grid, provenance.embedding)
        extra.update({
            "proj:code": grid.crs_code,  # None without georeferencing
            "proj:shape": [grid.height, grid.width],
            "proj:transform": list(grid.transform)[:6],
        })
    return pystac.Asset(
        href=href, media_type=MEDIA_TYPES[fmt], roles=["data", "embeddings"],
        title=_asset_title(fmt, provenance.embedding.dense), extra_fields=extra,
    )


def write_collection(
    layout: OutputLayout,
    items: list[dict[str, Any]],
    *,
    provenance: Provenance,
    source_href: str | None,
    description: str,
    properties: dict[str, Any] | None = None,
) -> Path:
    """Write one output collection and its stac-geoparquet mirror (which carries the
    collection in its metadata); its items exist already. ``properties`` are added to the
    collection (e.g. the quicklook basis, ``stacembed:quicklook``)."""
    collection = _collection(layout, items, provenance, source_href, description)
    collection.update(properties or {})
    for item in sorted(items, key=lambda d: d["id"]):
        collection["links"].append({"rel": "item", "href": layout.item_href(item["id"]),
                                    "type": "application/geo+json", "title": item["id"]})
    collection["assets"] = {**_assets_added_later(layout), "geoparquet-items": {
        "href": f"./{layout.items_parquet.name}", "type": MEDIA_TYPES["geoparquet"], "roles": ["collection-mirror"],
        "title": "The collection's items as stac-geoparquet",
    }}
    _write_items_parquet(layout, items, collection)
    write_json(layout.collection_file, collection)
    return layout.collection_file


def _assets_added_later(layout: OutputLayout) -> dict[str, Any]:
    """Assets that commands other than ``run`` gave the collection (``stacembed index``): a rerun
    keeps them (an index that no longer matches the items is noticed and not used)."""
    try:
        assets = json.loads(layout.collection_file.read_text()).get("assets", {})
    except (OSError, ValueError):
        return {}
    return {key: asset for key, asset in assets.items() if "index" in asset.get("roles", ())}


def update_collection(layout: OutputLayout, items: list[dict[str, Any]], properties: dict[str, Any]) -> Path:
    """Bring a written output collection up to date after its items' assets changed outside a
    run (``stacembed quicklook``): ``properties`` merged in, ``item_assets`` declaring the
    items' other assets, and the items mirror rewritten. Writes nothing when nothing changed."""
    collection = json.loads(layout.collection_file.read_text())
    collection.update(properties)
    collection["item_assets"] = {**collection.get("item_assets", {}), **_other_item_assets(items)}
    _write_items_parquet(layout, items, collection)
    write_json(layout.collection_file, collection)
    return layout.collection_file


def write_root_catalog(out: str | Path) -> Path:
    """Write the root catalog of ``out``, linking every output collection in it (written last)."""
    root = Path(out)
    children = sorted(path.parent.name for path in root.glob("*/collection.json")
                      if not path.parent.name.startswith("."))
    catalog = {
        "type": "Catalog", "stac_version": STAC_VERSION, "id": "stacembed-output", "title": CATALOG_TITLE,
        "description": "Embeddings made by stacembed.",
        "links": [
            {"rel": "root", "href": OutputLayout.CATALOG_SELF, "type": "application/json", "title": CATALOG_TITLE},
            *({"rel": "child", "href": f"./{name}/collection.json", "type": "application/json", "title": name}
              for name in children),
        ],
    }
    path = catalog_file(root)
    write_json(path, catalog)
    return path


def _collection(layout: OutputLayout, items, provenance: Provenance, source_href, description) -> dict[str, Any]:
    card, embedding = provenance.card, provenance.embedding
    chip_size, stride = provenance.chip_grid_size, provenance.stride
    bboxes = [i["bbox"] for i in items if i.get("bbox")]
    times = sorted(t for i in items for t in _times(i))
    spatial = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
               max(b[3] for b in bboxes)] if bboxes else [-180, -90, 180, 90]
    links = [{"rel": rel, "href": href, "type": "application/json", "title": CATALOG_TITLE}
             for rel, href in layout.COLLECTION_LINKS]
    links.append({"rel": "emb:model", "href": layout.model_href(card.name, from_item=False),
                  "type": "application/geo+json", "title": card.name})
    if source_href:
        links.append({"rel": "emb:source-data", "href": relative_href(source_href, layout.collection_file),
                      "type": "application/json", "title": "Source collection"})
    formats = tuple(provenance.parameters.get("formats") or ()) or tuple(_formats_of(items))
    item_assets = {
        asset_key(fmt, formats): {"type": MEDIA_TYPES[fmt], "roles": ["data", "embeddings"],
                                  "title": _asset_title(fmt, embedding.dense)}
        for fmt in formats
    }
    item_assets.update(_other_item_assets(items))
    mlm = next((url for url in card.item.get("stac_extensions", []) if "/mlm/" in url), MLM)
    collection: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EMBEDDINGS, ITEM_ASSETS, mlm],
        "id": layout.collection_id,
        "description": description,
        "license": "other",
        "extent": {"spatial": {"bbox": [spatial]},
                   "temporal": {"interval": [[times[0] if times else None, times[-1] if times else None]]}},
        "emb:type": "pixel" if embedding.dense else "chip",
        "emb:dimensions": embedding.dimensions,
        "data_type": embedding.dtype,
        "emb:chip_layout": {"layout_type": "regular_grid", "chip_size": [chip_size, chip_size],
                            "stride": [stride, stride]},
        "mlm:input": provenance.model_inputs(),
        "mlm:output": [provenance.model_output()],
        "item_assets": item_assets,
        "links": links,
        "assets": {},
    }
    gsds = {i["properties"].get("gsd") for i in items}
    if len(gsds) == 1 and None not in gsds:
        collection["gsd"] = gsds.pop()  # the extension's "spatial extent per embedding", when one for all
    return collection


def _formats_of(items: list[dict[str, Any]]) -> list[str]:
    """The formats of the items' embeddings assets, the ``embeddings`` asset's first."""
    by_type = {media_type: fmt for fmt, media_type in MEDIA_TYPES.items()}
    assets = items[0].get("assets", {}) if items else {}
    keys = sorted((key for key in assets if _is_embeddings_key(key)), key=lambda key: key != "embeddings")
    return [by_type[assets[key]["type"]] for key in keys if assets[key].get("type") in by_type]


def _is_embeddings_key(key: str) -> bool:
    return key == "embeddings" or key.startswith("embeddings-")


def _other_item_assets(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``item_assets`` entries for the items' assets other than the embeddings (the quicklooks
    ``thumbnail`` and ``overview``): type, roles and title, as the first item holding each has them."""
    declared: dict[str, dict[str, Any]] = {}
    for item in sorted(items, key=lambda d: d["id"]):
        for key, asset in item.get("assets", {}).items():
            if key not in declared and not _is_embeddings_key(key):
                declared[key] = {field: asset[field] for field in ("type", "roles", "title") if field in asset}
    return dict(sorted(declared.items()))


def _times(item: dict[str, Any]) -> list[str]:
    props = item["properties"]
    return [t for t in (props.get("datetime"), props.get("start_datetime"), props.get("end_datetime")) if t]


def import_ahead() -> None:
    """Import now what writing a collection will import: stac-geoparquet, which imports pandas
    and geopandas (0.3 s of one core, measured on 2 cores with torch loaded; pyarrow then finds
    pandas loaded when the GeoParquet writer converts its first row group).

    A local run calls this while its model embeds the first item (``executors.local``): there
    the import shares the cores with the forward passes, after the last batch it would be part
    of the run's serial end (measured: 0.39 -> 0.24-0.29 s from the last forward pass to the
    process's exit, ViT-S/16, 625 chips).
    """
    import stac_geoparquet.arrow  # noqa: F401 - imported for later


def _write_items_parquet(layout: OutputLayout, items: list[dict[str, Any]], collection: dict[str, Any]) -> None:
    """Write the stac-geoparquet mirror of ``items``, with ``collection`` in its metadata.

    Relative hrefs are rewritten against the table's own directory (they were relative to each
    item file), and columns that are null in every item get a type (string): GDAL reads no row
    of a file with a column of Arrow's null type. Items without geometry (no georeferencing)
    have a null ``geometry`` and ``bbox`` (stac-geoparquet parses neither: they are null-ed after).
    """
    import pyarrow as pa
    import stac_geoparquet.arrow

    records = [_rebased(item, layout) for item in sorted(items, key=lambda d: d["id"])]
    unplaced = [record.get("geometry") is None for record in records]
    for record, missing in zip(records, unplaced, strict=True):
        if missing:
            record.update(geometry={"type": "Point", "coordinates": [0.0, 0.0]}, bbox=[0.0, 0.0, 0.0, 0.0])
    table = stac_geoparquet.arrow.parse_stac_items_to_arrow(records).read_all()
    if any(unplaced):
        table = _nulled(table, ("geometry", "bbox"), pa.array(unplaced))
    schema = pa.schema([field.with_type(_typed(field.type)) for field in table.schema], metadata=table.schema.metadata)
    # Rendered aside first (stac-geoparquet writes only to paths), so that a rerun that changes
    # nothing rewrites nothing (``write_bytes`` leaves equal files alone).
    with tempfile.TemporaryDirectory(prefix="stacembed-") as scratch:
        rendered = Path(scratch) / layout.items_parquet.name
        stac_geoparquet.arrow.to_parquet(table.cast(schema), rendered, collections={collection["id"]: collection})
        write_bytes(layout.items_parquet, rendered.read_bytes())


def _nulled(table, names: tuple[str, ...], rows):
    """``table`` with the columns ``names`` null in ``rows`` (a boolean array), fields (and their
    metadata) kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in names:
        index = table.schema.get_field_index(name)
        column = table.column(index).combine_chunks()
        if pa.types.is_struct(column.type):
            valid = pc.and_(pc.invert(rows), pc.is_valid(column))
            values = pa.StructArray.from_arrays(column.flatten(), fields=list(column.type), mask=pc.invert(valid))
        else:
            values = pc.if_else(rows, pa.scalar(None, column.type), column)
        table = table.set_column(index, table.schema.field(index), values)
    return table


def _rebased(item: dict[str, Any], layout: OutputLayout) -> dict[str, Any]:
    """``item`` with its relative hrefs made relative to the collection directory (where
    ``items.parquet`` is) instead of its own directory."""
    item_dir = layout.item_file(item["id"]).parent.name

    def rebase(href: str) -> str:
        if urlparse(href).scheme or href.startswith("/"):
            return href
        joined = posixpath.normpath(posixpath.join(item_dir, href))
        return joined if joined.startswith("../") else f"./{joined}"

    data = copy.deepcopy(item)
    data["collection"] = layout.collection_id
    for asset in data.get("assets", {}).values():
        asset["href"] = rebase(asset["href"])
    for link in data.get("links", []):
        link["href"] = rebase(link["href"])
    return data


def _typed(datatype):
    """``datatype`` with Arrow's null type, at any depth, replaced by string."""
    import pyarrow as pa

    if pa.types.is_null(datatype):
        return pa.string()
    if pa.types.is_struct(datatype):
        return pa.struct([field.with_type(_typed(field.type)) for field in datatype])
    if pa.types.is_fixed_size_list(datatype):
        return pa.list_(datatype.value_field.with_type(_typed(datatype.value_type)), datatype.list_size)
    if pa.types.is_large_list(datatype):
        return pa.large_list(datatype.value_field.with_type(_typed(datatype.value_type)))
    if pa.types.is_list(datatype):
        return pa.list_(datatype.value_field.with_type(_typed(datatype.value_type)))
    return datatype


def write_model_card(layout: OutputLayout, card: ModelCard) -> None:
    """Copy the card next to the outputs, so that ``emb:model`` resolves.

    Its weights href is the card's URL when the weights are remote, and a local weights file is
    linked relatively to the copy, as local sources are (``relative_href``): it resolves while
    the output stays beside it, and names no absolute directory of this machine.
    """
    path = layout.model_card_file(card.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = card.standalone_item()
    weights = weights_asset(data)
    if weights is not None and card.weights_href:
        local = relative_href(card.weights_href, path)
        weights["href"] = redact(local) if local == card.weights_href else local
    write_json(path, data)


