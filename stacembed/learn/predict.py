"""``predict``: a trained head applied to every chip of an embeddings catalog, published as STAC.

Per embedding item: a map on the item's embedding grid (one pixel per chip position: the class
value, uint8 with a colour table when the classes allow, or the predicted value, float32),
optionally the class probabilities as float32 bands, and a GeoParquet of every chip's
prediction beside its footprint; one STAC item with the classification extension
(``classification:classes`` with counts) linked ``derived_from`` the embedding item and to the
head's card. A head trained on another model, layer or embedding layout is refused before any
chip is read (``card.check_fits``).

``embed_and_predict`` chains ``stacembed run`` and ``predict`` (``stacembed run --head``): the
pixels are read once, by the run; the predictions read the embeddings it wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..analysis.chipmap import ChipMaps, Layer, map_chips
from ..analysis.cluster import palette
from ..analysis.derived import (
    DerivedOutput,
    NoChipError,
    catalog_href,
    embedding_grid,
    file_asset,
    item_key,
    model_identity,
    one_model,
    processing,
    projection_fields,
    time_properties,
    unique_ids,
    write_cog,
)
from ..config import RunConfig
from ..embeddings import BATCH_ROWS, EmbeddingItem, open_embeddings
from ..grid import Grid
from ..stac import COG, FILE, ITEM_ASSETS, PARQUET, PROCESSING, PROJECTION
from .card import CARD_FILE, CLASSIFICATION, check_fits, classes_of, read_head
from .heads import Head
from .segment import fine_grid, tiles_of

MAP_ASSET, PROBABILITIES_ASSET, TABLE_ASSET = "prediction", "probabilities", "predictions"
NODATA_CLASS = 255  # the uint8 class map's "no chip"; classes above it are written as int32 with -1


@dataclass(frozen=True)
class PredictResult:
    """What ``predict`` wrote: the catalog and collection, the items and the chips predicted."""

    catalog: Path
    collection: Path
    items: tuple[str, ...]
    chips: int


def predict(embeddings: str | Path, head: str | Path, *, out: str | Path, probabilities: bool = False,
            output_collection: str | None = None, device: str = "auto", batch_rows: int = BATCH_ROWS,
            progress: bool = True, table: bool = True) -> PredictResult:
    """Predict every chip of ``embeddings`` with the head at ``head`` (its directory or card);
    publish the maps as a collection under ``out`` (``table`` False: no table of every chip)."""
    model_head, card = read_head(head)
    items = list(open_embeddings(embeddings))
    model = one_model(items, f"catalog {embeddings}")
    for item in items:
        check_fits(card, model, item.kind, f"item {item.id!r}")
    model_head.to(device)
    plan = _Plan(model_head, card, _card_href(head), probabilities, table)
    output = DerivedOutput(Path(out), output_collection or f"predictions-{card['id']}")
    output.check_free()
    chips = 0
    with output.writing(), tqdm(desc="predicting chips", unit="chip", disable=not progress) as bar:
        ids = unique_ids(items)
        for item in items:
            chips += _predict_item(output, ids[item_key(item)], item, plan, batch_rows, bar.update)
        output.write_collection(**plan.collection(catalog_href(embeddings)))
    return PredictResult(output.catalog_file, output.layout.collection_file, tuple(i["id"] for i in output.items),
                         chips)


def embed_and_predict(config: RunConfig, head: str | Path, *, probabilities: bool = False,
                      ready: Callable[[], None] | None = None) -> tuple[Any, PredictResult]:
    """``stacembed run --head``: embed as ``config`` says, then predict the embeddings written,
    into the same ``--out``; the head is checked against the run's model before any pixel is read.
    ``ready``: as ``pipeline.run``'s."""
    from ..pipeline import run

    _, card = read_head(head)

    def fits(frozen: Any) -> None:
        provenance = frozen.provenance
        model = model_identity(provenance.runtime_parameters(), provenance.embedding.dimensions)
        check_fits(card, model, "pixel" if provenance.embedding.dense else "chip", "the run")

    summary = run(config, check=fits, ready=ready)
    result = predict(summary.catalog, head, out=config.out, probabilities=probabilities, device=config.device,
                     progress=config.progress)
    return summary, result


@dataclass(frozen=True)
class _Plan:
    """What is computed and written per chip for ``head`` (from its card)."""

    head: Head
    card: dict[str, Any]
    card_href: str
    probabilities: bool
    table: bool = True  # a table of every chip beside the maps (a segmentation's pixels have only the map)

    @property
    def tabled(self) -> bool:
        return self.table and not self.head.dense

    @property
    def classes(self) -> list[dict[str, Any]] | None:
        return classes_of(self.card)

    @property
    def values(self) -> np.ndarray:
        return np.array([c["value"] for c in self.classes or ()])

    @property
    def map_dtype(self) -> tuple[str, float]:
        if self.classes is None:
            return "float32", float("nan")
        return ("uint8", NODATA_CLASS) if self.values.max() < NODATA_CLASS else ("int32", -1)

    def compute(self, vectors: np.ndarray) -> Mapping[str, np.ndarray]:
        if self.classes is None:
            return {"predicted": self.head.predict(vectors).astype("float32")}
        chances = self.head.predict_proba(vectors)
        best = chances.argmax(axis=1)
        return {"predicted": self.values[best], "probability": chances[np.arange(len(best)), best],
                "probabilities": chances}

    def layers(self) -> list[Layer]:
        dtype, nodata = self.map_dtype
        layers = [Layer("predicted", dtype, nodata)]
        if self.probabilities and self.classes is not None:
            layers.append(Layer("probabilities", "float32", float("nan"), bands=len(self.classes)))
        return layers

    def columns(self) -> dict[str, pa.DataType]:
        if self.classes is None:
            return {"predicted": pa.float32()}
        return {"predicted": pa.from_numpy_dtype(self.values.dtype), "probability": pa.float32()}

    def class_objects(self, counts: np.ndarray | None = None) -> list[dict[str, Any]]:
        """The classes with a colour each (the labels' own, else the cluster maps' palette),
        their counts, and the no-chip value of a uint8 map."""
        objects = []
        colours = palette(len(self.classes or ()))
        for index, entry in enumerate(self.classes or ()):
            entry = {"color_hint": "".join(f"{c:02X}" for c in colours[index]), **entry}
            if counts is not None:
                entry["count"] = int(counts[index])
            objects.append(entry)
        if self.map_dtype[0] == "uint8":
            objects.append({"value": NODATA_CLASS, "name": "no-chip", "title": "No chip", "nodata": True})
        return objects

    def colormap(self) -> dict[int, tuple[int, int, int, int]] | None:
        if self.map_dtype[0] != "uint8":
            return None
        table = {int(c["value"]): (*bytes.fromhex(c["color_hint"]), 255) for c in self.class_objects()
                 if "color_hint" in c}
        table[NODATA_CLASS] = (0, 0, 0, 0)
        return table

    def collection(self, embeddings: str) -> dict[str, Any]:
        task = self.card["properties"]["mlm:tasks"][0]
        map_asset = {"type": COG, "roles": ["data", *(("classification",) if self.classes else ())],
                     "title": _map_title(self)}
        if self.classes is not None:
            map_asset["classification:classes"] = self.class_objects()
        return {
            "title": f"Predictions of {self.card['id']}",
            "description": f"Every chip embedding predicted ({task}) by the head {self.card['id']}: a map"
                           f"{' and a table' if self.tabled else ''} per embedding item.",
            "extensions": [CLASSIFICATION, ITEM_ASSETS, FILE] if self.classes else [ITEM_ASSETS, FILE],
            "item_assets": {MAP_ASSET: map_asset, **({TABLE_ASSET: {"type": PARQUET, "roles": ["data"],
                                                                     "title": _TABLE_TITLE}} if self.tabled else {})},
            "derived_from": [(embeddings, "Embeddings"), (self.card_href, "Head (MLM card)")],
            "extra": {"stacembed:head": {"id": self.card["id"], "task": task}},
        }


_TABLE_TITLE = "Prediction of each chip (GeoParquet: footprint, chip_row, chip_col, source item, prediction)"


def _map_title(plan: _Plan) -> str:
    dtype, nodata = plan.map_dtype
    if plan.classes is None:
        return "Predicted value of each chip (float32 on the embeddings' grid; NaN: no chip)"
    if plan.head.dense:
        return f"Predicted class of each pixel ({dtype} class map on the source pixel grid; {nodata:g}: no patch)"
    return f"Predicted class of each chip ({dtype} class map on the embeddings' grid; {nodata:g}: no chip)"


def _predict_item(output: DerivedOutput, item_id: str, item: EmbeddingItem, plan: _Plan, batch_rows: int,
                  on_batch: Any) -> int:
    try:
        grid = embedding_grid(item)
    except NoChipError:
        return 0
    if plan.head.dense:
        made = _segment(item, grid, plan, on_batch)
        grid = fine_grid(grid, plan.head.scale)
    else:
        made = map_chips(item, grid, output.asset_path(item_id, "geoparquet") if plan.table else None, plan.compute,
                         layers=plan.layers(), columns=plan.columns(), batch_rows=batch_rows, on_batch=on_batch)
    _write_item(output, item_id, item, plan, grid, made)
    return made.chips


def _segment(item: EmbeddingItem, grid: Grid, plan: _Plan, on_batch: Any) -> ChipMaps:
    """The class (and probability) maps of a dense item at label resolution, a tile at a time:
    each tile of patch embeddings decoded by the head; pixels under no patch are nodata."""
    scale = plan.head.scale
    layers = {layer.column: layer for layer in plan.layers()}
    maps = {name: np.full((layer.bands, grid.height * scale, grid.width * scale), layer.nodata, layer.dtype)
            for name, layer in layers.items()}
    patches = 0
    for window in tiles_of(grid):
        values, _, _ = item.array(window=window)
        empty = np.isnan(values).all(axis=0).repeat(scale, 0).repeat(scale, 1)
        chances = plan.head.predict_proba(np.nan_to_num(values, nan=0.0)[None])[0]
        rows = slice(int(window.row_off) * scale, int(window.row_off + window.height) * scale)
        cols = slice(int(window.col_off) * scale, int(window.col_off + window.width) * scale)
        best = plan.values[chances.argmax(axis=0)]
        maps["predicted"][0, rows, cols] = np.where(empty, layers["predicted"].nodata, best)
        if "probabilities" in maps:
            maps["probabilities"][:, rows, cols] = np.where(empty, np.nan, chances)
        kept = int((~np.isnan(values).all(axis=0)).sum())
        patches += kept
        on_batch(kept)
    return ChipMaps(maps, patches)


def _write_item(output: DerivedOutput, item_id: str, item: EmbeddingItem, plan: _Plan, grid: Grid,
                made: ChipMaps) -> None:
    dtype, nodata = plan.map_dtype
    predicted = made.maps["predicted"][0]
    map_path = output.asset_path(item_id, "geotiff")
    write_cog(map_path, predicted, grid, nodata=nodata, colormap=plan.colormap(), description=_map_title(plan),
              tags={"STAC_ITEM_ID": item_id, "DERIVED_FROM": item.id})
    extra: dict[str, Any] = {}
    if plan.classes is not None:
        found = predicted[predicted != nodata]
        counts = np.array([(found == value).sum() for value in plan.values])
        extra["classification:classes"] = plan.class_objects(counts)
    assets = {
        MAP_ASSET: file_asset(map_path, media_type=COG, roles=["data", *(("classification",) if plan.classes else ())],
                              title=_map_title(plan), **extra, **projection_fields(grid)),
    }
    table = output.asset_path(item_id, "geoparquet")
    if table.exists():  # chips have a table; a segmentation's pixels are its map
        assets[TABLE_ASSET] = file_asset(table, media_type=PARQUET, roles=["data"], title=_TABLE_TITLE)
    if "probabilities" in made.maps:
        path = map_path.with_name(f"{map_path.stem}-probabilities.tif")
        names = [c["name"] for c in plan.classes or ()]
        write_cog(path, made.maps["probabilities"], grid, nodata=float("nan"),
                  description=[f"probability of {name}" for name in names])
        assets[PROBABILITIES_ASSET] = file_asset(path, media_type=COG, roles=["data"],
                                                 title="Probability of each class (float32 bands, in the order of "
                                                       "classification:classes; NaN: no chip)",
                                                 **projection_fields(grid))
    what = "patch embeddings" if plan.head.dense else "chip embedding"
    lineage = (f"Each {what} of item {item.id!r} predicted by the {plan.head.name} head "
               f"{plan.card['id']!r} ({plan.card['properties']['mlm:tasks'][0]})")
    properties = {**time_properties(item), **processing(lineage, {"torch": _torch_version()}),
                  "stacembed:head": plan.card["id"]}
    extensions = [PROJECTION, FILE, PROCESSING, *([CLASSIFICATION] if plan.classes else [])]
    output.add_item(item_id, geometry=item.stac_item.geometry, bbox=item.bbox, properties=properties,
                    extensions=extensions, assets=assets, sources=[item],
                    links=[("derived_from", plan.card_href, f"Head {plan.card['id']} (MLM card)")])


def _torch_version() -> str:
    import torch

    return torch.__version__


def _card_href(head: str | Path) -> str:
    path = Path(head)
    return str((path / CARD_FILE if path.is_dir() else path).resolve())
