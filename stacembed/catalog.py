"""Write the outputs as STAC: one embeddings item per source item, a collection, a catalog.

Output documents are STAC 1.0.0 because the Embeddings extension v0.0.1 builds on the 1.0.0
core schemas. They declare, and fill, the embeddings, projection v2.0.0, file v2.1.0 and
processing v1.2.0 extensions. The catalog is self-contained: every href inside it is relative.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac

from ._version import __version__
from .access import redact
from .chips import ChipGrid
from .layout import OutputLayout, atomic_path, multihash_sha256, write_json
from .models import ModelCard
from .writers import EmbeddingLayout

STAC_VERSION = "1.0.0"
EMBEDDINGS = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
MEDIA_TYPES = {
    "geoparquet": "application/vnd.apache.parquet",
    "geotiff": "image/tiff; application=geotiff; profile=cloud-optimized",
}


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


def software_versions() -> dict[str, str]:
    import timm
    import torch

    return {"stacembed": __version__, "torch": torch.__version__, "timm": timm.__version__}


def asset_key(fmt: str, formats: tuple[str, ...]) -> str:
    """The first requested format is the ``embeddings`` asset; others are ``embeddings-<format>``."""
    return "embeddings" if fmt == formats[0] else f"embeddings-{fmt}"


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
) -> dict[str, Any]:
    """The STAC item describing the embeddings of ``sources`` (hrefs relative to the item file,
    as ``layout`` places it).

    One source item, or a time series on one grid (described by its first item, spanning all
    of their times). ``properties`` are what the writers determined (e.g. ``emb:quantization``).
    """
    source = sources[0]
    extra = properties or {}
    properties = {k: v for k, v in source.properties.items() if not k.startswith("proj:")}
    properties.update(extra)
    if len(sources) > 1:
        properties.update(_time_span(sources))
    properties.update({
        "processing:software": software_versions(),
        "processing:datetime": pystac.utils.datetime_to_str(datetime.now(UTC)),
        "processing:lineage": (
            f"{chip_grid.size}x{chip_grid.size} px chips every {chip_grid.stride} px on "
            f"{provenance.grid_description(source.id)}, embedded with model {provenance.card.name!r} "
            f"({provenance.card.architecture})"
        ),
        "emb:runtime_parameters": provenance.runtime_parameters(),
    })
    item = pystac.Item(
        id=item_id,
        geometry=source.geometry,
        bbox=source.bbox,
        datetime=source.datetime if len(sources) == 1 else None,
        properties=properties,
        collection=layout.collection_id,
        stac_extensions=[EMBEDDINGS, PROJECTION, FILE, PROCESSING],
    )
    for fmt in formats:
        href = layout.asset_href(item_id, fmt)
        item.add_asset(asset_key(fmt, formats), _asset(fmt, href, files[fmt], chip_grid, provenance))
    for each in sources:
        href = canonical_href(each)
        if href:
            item.add_link(pystac.Link("derived_from", href, pystac.MediaType.JSON, f"Source item {each.id}"))
    item.add_link(pystac.Link("emb:model", layout.model_href(provenance.card.name), pystac.MediaType.JSON,
                              provenance.card.name))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    data["stac_version"] = STAC_VERSION
    data["links"] += [{"rel": rel, "href": href, "type": "application/json"} for rel, href in layout.ITEM_LINKS]
    return data


def canonical_href(obj: pystac.STACObject) -> str | None:
    """Where a source item (or collection) lives for good, credentials removed: its
    ``canonical`` link, else its own href.

    A copy (a platform's stage-in, a mirror) names the original with ``canonical`` (STAC best
    practices), and provenance should outlive the copy, which may be a staging directory that
    is gone once the job ends.
    """
    canonical = obj.get_single_link("canonical")
    href = canonical.get_absolute_href() if canonical is not None else obj.get_self_href()
    return redact(href) if href else None


def _time_span(sources: list[pystac.Item]) -> dict[str, Any]:
    from .resolve import item_time_range

    ranges = [item_time_range(s) for s in sources]
    return {
        "datetime": None,
        "start_datetime": pystac.utils.datetime_to_str(min(r[0] for r in ranges)),
        "end_datetime": pystac.utils.datetime_to_str(max(r[1] for r in ranges)),
        "stacembed:source_items": [s.id for s in sources],
    }


def _asset(fmt: str, href: str, path: Path, chip_grid: ChipGrid, provenance: Provenance) -> pystac.Asset:
    extra: dict[str, Any] = {"file:size": path.stat().st_size, "file:checksum": multihash_sha256(path)}
    if fmt == "geotiff":
        embedding = provenance.embedding
        grid = chip_grid.patch_grid(embedding.patches) if embedding.dense else chip_grid.embedding_grid
        extra.update({
            "proj:code": grid.crs_code,
            "proj:shape": [grid.height, grid.width],
            "proj:transform": list(grid.transform)[:6],
        })
    title = {"geoparquet": "Chip embeddings (GeoParquet, one row per chip)",
             "geotiff": "Chip embeddings on the chip grid (COG, one band per dimension)"}[fmt]
    return pystac.Asset(
        href=href, media_type=MEDIA_TYPES[fmt], roles=["data", "embeddings"],
        title=title, extra_fields=extra,
    )


def write_catalog(
    layout: OutputLayout,
    items: list[dict[str, Any]],
    *,
    provenance: Provenance,
    source_href: str | None,
    description: str,
) -> Path:
    """Write the collection, its stac-geoparquet mirror and the root catalog; items exist already."""
    collection = _collection(layout, items, provenance, source_href, description)
    for item in sorted(items, key=lambda d: d["id"]):
        collection["links"].append({"rel": "item", "href": layout.item_href(item["id"]),
                                    "type": "application/geo+json"})
    _write_items_parquet(layout.items_parquet, items, layout.collection_id)
    collection["assets"]["geoparquet-items"] = {
        "href": f"./{layout.items_parquet.name}", "type": MEDIA_TYPES["geoparquet"], "roles": ["collection-mirror"],
        "title": "The collection's items as stac-geoparquet",
    }
    write_json(layout.collection_file, collection)
    catalog = {
        "type": "Catalog", "stac_version": STAC_VERSION, "id": "stacembed-output",
        "description": "Embeddings made by stacembed.",
        "links": [
            {"rel": "root", "href": layout.CATALOG_SELF, "type": "application/json"},
            {"rel": "child", "href": layout.collection_href(), "type": "application/json"},
        ],
    }
    write_json(layout.catalog_file, catalog)
    return layout.catalog_file


def _collection(layout: OutputLayout, items, provenance: Provenance, source_href, description) -> dict[str, Any]:
    card, embedding = provenance.card, provenance.embedding
    chip_size, stride = provenance.chip_grid_size, provenance.stride
    bboxes = [i["bbox"] for i in items if i.get("bbox")]
    times = sorted(t for i in items for t in _times(i))
    spatial = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
               max(b[3] for b in bboxes)] if bboxes else [-180, -90, 180, 90]
    links = [{"rel": rel, "href": href, "type": "application/json"} for rel, href in layout.COLLECTION_LINKS]
    links.append({"rel": "emb:model", "href": layout.model_href(card.name, from_item=False),
                  "type": "application/geo+json", "title": card.name})
    if source_href:
        links.append({"rel": "emb:source-data", "href": source_href, "type": "application/json"})
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EMBEDDINGS],
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
        "links": links,
        "assets": {},
    }


def _times(item: dict[str, Any]) -> list[str]:
    props = item["properties"]
    return [t for t in (props.get("datetime"), props.get("start_datetime"), props.get("end_datetime")) if t]


def _write_items_parquet(path: Path, items: list[dict[str, Any]], collection_id: str) -> None:
    import stac_geoparquet.arrow

    records = [{**item, "collection": collection_id} for item in items]
    table = stac_geoparquet.arrow.parse_stac_items_to_arrow(records)
    with atomic_path(path) as tmp:
        stac_geoparquet.arrow.to_parquet(table, tmp)


def write_model_card(layout: OutputLayout, card: ModelCard) -> None:
    """Copy the card next to the outputs (weights hrefs made absolute) so ``emb:model`` resolves."""
    path = layout.model_card_file(card.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = card.standalone_item()
    for asset in data.get("assets", {}).values():
        if "mlm:model" in asset.get("roles", ()) and card.weights_href:
            asset["href"] = card.weights_href
    write_json(path, data)
