"""The baseline a head is compared on: each chip's band means, made by ``stacembed run`` itself.

What the embeddings add is only known against what the pixels alone give. The baseline input
is computed through the same pipeline as the embeddings — the same source items (the
embedding items' ``derived_from`` links), the same bands, chips, stride, ``--min-valid`` and
grid (``emb:runtime_parameters``) — with the parameter-free ``band-means`` backbone in place of
the model, so its chips are the embeddings' chips, joined by ``(source_item, chip_row,
chip_col)``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..access import Access
from ..embeddings import EmbeddingCatalog, EmbeddingItem, open_embeddings
from ..errors import ReadError, StacembedError
from ..models.backbones.bandmeans import ARCHITECTURE
from ..models.weights import RANDOM

# The run parameters the baseline takes over: those that decide which pixels make a chip.
_SHAPING = ("chip_size", "stride", "min_valid", "crs", "resolution", "resampling")


class BaselineUnavailable(StacembedError):
    """The band-means baseline cannot be made for these embeddings (the reason says why)."""


def band_means_catalog(items: Sequence[EmbeddingItem], work: Path, *, progress: bool = False) -> EmbeddingCatalog:
    """Embed the source items of ``items`` with ``band-means`` into ``work`` and open the result."""
    from ..config import RunConfig
    from ..pipeline import run

    parameters = _run_parameters(items)
    work.mkdir(parents=True, exist_ok=True)
    sources = work / "sources.json"
    sources.write_text(json.dumps(_item_collection(items)))
    card = work / "band-means.json"
    card.write_text(json.dumps(_baseline_card(items[0])))
    config = RunConfig(out=work / "embeddings", items=str(sources), model=str(card), weights=RANDOM,
                       formats=("geoparquet",), progress=progress,
                       **{key: parameters[key] for key in _SHAPING if parameters.get(key) is not None})
    try:
        run(config)
    except StacembedError as exc:
        raise BaselineUnavailable(f"the band-means run failed: {exc}") from None
    return open_embeddings(work / "embeddings")


def _run_parameters(items: Sequence[EmbeddingItem]) -> dict[str, Any]:
    """The parameters every item was made with; a baseline needs one set, single-date chips."""
    found = {json.dumps({k: item.stac_item.properties.get("emb:runtime_parameters", {}).get(k) for k in
                         (*_SHAPING, "time_steps", "pooling")}, sort_keys=True) for item in items}
    if len(found) != 1:
        raise BaselineUnavailable("the embedding items were made with different chip parameters")
    parameters = json.loads(found.pop())
    if parameters.get("chip_size") is None:
        raise BaselineUnavailable("the embedding items record no emb:runtime_parameters (chip size, stride)")
    if (parameters.get("time_steps") or 1) > 1:
        raise BaselineUnavailable("time-series embeddings (--time-steps > 1) have no single-date band means")
    if parameters.get("pooling") == "none":
        raise BaselineUnavailable("dense embeddings have no per-chip band means")
    return parameters


def _item_collection(items: Sequence[EmbeddingItem]) -> dict[str, Any]:
    """The source items of ``items`` as one ItemCollection, asset hrefs made absolute."""
    features = []
    for item in items:
        try:
            sources = item.source_items()
        except ReadError as exc:
            raise BaselineUnavailable(str(exc)) from None
        if len(sources) != 1:
            raise BaselineUnavailable(f"item {item.id!r} has {len(sources)} source items, not one")
        features.append(sources[0].to_dict(include_self_link=False, transform_hrefs=False))
    return {"type": "FeatureCollection", "features": features}


def _baseline_card(item: EmbeddingItem) -> dict[str, Any]:
    """The embeddings' model card with ``band-means`` as its network: the same bands and chip
    size, raw values (no scaling: the means are of the source pixels), one value per band."""
    link = item.stac_item.get_single_link("emb:model")
    if link is None:
        raise BaselineUnavailable(f"item {item.id!r} links no model card (emb:model)")
    href = link.get_absolute_href()
    try:
        card = json.loads(Access().stac_io(href).read_text(href))
    except Exception as exc:  # noqa: BLE001 - any failure to read makes the baseline unavailable
        raise BaselineUnavailable(f"model card {href} cannot be read: {exc}") from None
    card = copy.deepcopy(card)
    properties = card["properties"]
    model_input = properties["mlm:input"][0]
    model_input.pop("value_scaling", None)
    bands = len(model_input["bands"])
    properties.update({
        "mlm:name": f"band-means-{properties['mlm:name']}",
        "mlm:architecture": ARCHITECTURE,
        "mlm:pretrained": False,
        "mlm:input": [model_input],
        "mlm:output": [{"name": "band-means", "tasks": ["regression"],
                        "result": {"shape": [-1, bands], "dim_order": ["batch", "embedding"],
                                   "data_type": "float32"}}],
    })
    card["id"] = properties["mlm:name"]
    card["assets"] = {}
    card["links"] = []
    return card
