"""Benchmark inputs, built once and cached under ``benchmarks/.data`` (gitignored).

Imagery: the real Landsat 7 ETM+ pixels of the bundled sample (``catalogs/sample``: four
quadrant items, one COG per band) are mosaicked back into the 349 x 352 px scene and mirrored
(reflected, so there are no seams) up to ``side`` x ``side`` pixels. Each band is written as
one Cloud-Optimized GeoTIFF like the sample's (uint8, DEFLATE, 256 px tiles), on the sample's
grid: same CRS (EPSG:31985), same 28.5 m pixels, same top-left corner, extended to the south
and east. A static STAC 1.1 catalog (catalog.json -> collection.json -> one item) describes it
with the sample's metadata (``proj:code``, ``proj:shape``, ``proj:transform``, ``bands`` with
``eo:common_name``).

Models (cards in ``models/``, artifacts made here, seeded, into ``.data/models/``):
``resnet18-landsat.json`` -> ``resnet18-landsat.safetensors`` (timm resnet18, 6 bands, 64 px);
``vit-s16-landsat.json`` -> ``vit-s16-landsat.safetensors`` (timm vit_small_patch16_224, 6 bands,
224 px); ``prithvi-tiny-landsat.json`` -> ``prithvi-tiny-landsat.pt`` (stacembed's PrithviViT at
TerraTorch's ``prithvi_eo_tiny`` size, traced to TorchScript, 6 bands, 224 px).

Everything is built into a temporary directory and renamed into place, with a ``built.json``
marker recording the parameters; a directory whose marker does not match is rebuilt.

Usage:  python benchmarks/bench_data.py [--base-size 2048] [--size-factors 1,4,16]   (run.py calls it)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used, so that importing this module stays light
    import rasterio.crs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT / "catalogs" / "sample"
DATA = HERE / ".data"
RESNET18_CARD = HERE / "models" / "resnet18-landsat.json"
RESNET18_WEIGHTS = DATA / "models" / "resnet18-landsat.safetensors"
VIT_S16_CARD = HERE / "models" / "vit-s16-landsat.json"
VIT_S16_WEIGHTS = DATA / "models" / "vit-s16-landsat.safetensors"
# The benchmark models by short name: the built-in demo's name, else a card of models/.
MODELS = {
    "demo": "stacembed-demo-landsat",
    "resnet18": str(RESNET18_CARD),
    "vit-s16": str(VIT_S16_CARD),  # 224 px chips
    "prithvi-tiny": str(HERE / "models" / "prithvi-tiny-landsat.json"),  # 224 px, TorchScript (run.py: --skip-naive)
}
PRITHVI_TINY_CARD = HERE / "models" / "prithvi-tiny-landsat.json"
PRITHVI_TINY_ARTIFACT = DATA / "models" / "prithvi-tiny-landsat.pt"
# TerraTorch's prithvi_eo_tiny (terratorch/models/backbones/prithvi_vit.py ``prithvi_cfgs``), one frame.
PRITHVI_TINY = dict(patch_size=(1, 16, 16), num_frames=1, embed_dim=256, depth=4, num_heads=4, mlp_ratio=4.0)

BUILDER_VERSION = 1  # bump when the output of this file changes
COLLECTION = "landsat-etm-bench"
START = datetime(1999, 4, 15, tzinfo=UTC)
END = datetime(2003, 5, 31, 23, 59, 59, tzinfo=UTC)
# Band table, media type and extensions: the sample catalog's own, from the script that builds it.
_spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sample)
COG, BANDS, EXTENSIONS = _sample.COG, _sample.BANDS, _sample.EXTENSIONS


class DataError(RuntimeError):
    """The benchmark data cannot be built (e.g. the sample catalog is missing)."""


def side_for(base_size: int, factor: float) -> int:
    """The side of a square raster with ``factor`` times the area of a ``base_size`` square."""
    return int(round(base_size * math.sqrt(factor)))


def sample_scene() -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    """The sample's four quadrant items mosaicked back into one (6, H, W) uint8 scene."""
    import pystac
    import rasterio
    from rasterio.windows import from_bounds

    catalog_path = SAMPLE / "catalog.json"
    if not catalog_path.is_file():
        raise DataError(f"sample catalog {catalog_path} not found; run from a stacembed checkout")
    items = list(pystac.Catalog.from_file(str(catalog_path)).get_items(recursive=True))
    if not items:
        raise DataError(f"sample catalog {catalog_path} holds no items")
    grids = []
    for item in items:
        with rasterio.open(item.assets[BANDS[0][0]].get_absolute_href()) as ds:
            grids.append((ds.transform, ds.width, ds.height, ds.crs))
    crs = grids[0][3]
    res = grids[0][0].a
    left = min(t.c for t, *_ in grids)
    top = max(t.f for t, *_ in grids)
    right = max(t.c + w * t.a for t, w, _h, _c in grids)
    bottom = min(t.f + h * t.e for t, _w, h, _c in grids)
    width, height = int(round((right - left) / res)), int(round((top - bottom) / res))
    transform = rasterio.Affine(res, 0.0, left, 0.0, -res, top)
    scene = np.zeros((len(BANDS), height, width), dtype="uint8")
    filled = np.zeros((height, width), dtype=bool)
    for item in items:
        for index, (key, *_rest) in enumerate(BANDS):
            with rasterio.open(item.assets[key].get_absolute_href()) as ds:
                if ds.crs != crs or ds.transform.a != res:
                    raise DataError(f"{item.id}/{key} is not on the sample grid")
                window = from_bounds(*ds.bounds, transform=transform).round_offsets().round_lengths()
                rows = slice(window.row_off, window.row_off + ds.height)
                cols = slice(window.col_off, window.col_off + ds.width)
                scene[index, rows, cols] = ds.read(1)
                filled[rows, cols] = True
    if not filled.all():
        raise DataError("the sample items do not tile their bounding box; cannot mosaic them")
    return scene, transform, crs


def mirror_indices(length: int, target: int) -> np.ndarray:
    """Indices 0..length-1 reflected back and forth to fill ``target``: 0 1 .. n-1 n-1 .. 1 0 0 1 .."""
    i = np.arange(target) % (2 * length)
    return np.where(i < length, i, 2 * length - 1 - i)


def _fingerprint(side: int) -> dict:
    digest = hashlib.sha256()
    for path in sorted(SAMPLE.glob("*/*/*.tif")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return {"builder_version": BUILDER_VERSION, "side": side, "sample_sha256": digest.hexdigest()[:16]}


def build_catalog(side: int, data_dir: Path = DATA, log=print) -> Path:
    """The catalog.json of the ``side`` x ``side`` px benchmark item, built if not cached."""
    target = data_dir / f"landsat-{side}"
    marker = target / "built.json"
    wanted = _fingerprint(side)
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return target / "catalog.json"
        except ValueError:
            pass
        log(f"data: {target} is stale or incomplete, rebuilding")
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(data_dir)
    log(f"data: building {side} x {side} px x {len(BANDS)} bands into {target} ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-landsat-{side}-", dir=data_dir))
    tmp.chmod(0o755)
    try:
        _write_catalog(tmp, side)
        (tmp / "built.json").write_text(json.dumps(wanted, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / "catalog.json"


def _remove_stale(data_dir: Path) -> None:
    """Half-built directories of builds that were killed (their process is gone)."""
    for path in data_dir.glob(".tmp-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _write_catalog(root: Path, side: int) -> None:
    import pystac
    import rasterio
    import rasterio.warp

    scene, transform, crs = sample_scene()
    _bands, height, width = scene.shape
    rows, cols = mirror_indices(height, side), mirror_indices(width, side)
    item_id = f"L7-olinda-mirror-{side}"
    item_dir = root / COLLECTION / item_id
    item_dir.mkdir(parents=True)
    left, top, res = transform.c, transform.f, transform.a
    bounds = (left, top - side * res, left + side * res, top)
    ring = [(bounds[0], bounds[1]), (bounds[2], bounds[1]), (bounds[2], bounds[3]), (bounds[0], bounds[3]),
            (bounds[0], bounds[1])]
    footprint = rasterio.warp.transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]},
                                             precision=7)
    coords = np.array(footprint["coordinates"][0])
    item = pystac.Item(
        id=item_id, geometry=footprint,
        bbox=[float(coords[:, 0].min()), float(coords[:, 1].min()),
              float(coords[:, 0].max()), float(coords[:, 1].max())],
        datetime=None, start_datetime=START, end_datetime=END,
        properties={
            "description": (f"Benchmark input: the Landsat 7 ETM+ sample scene near Olinda, Brazil "
                            f"(catalogs/sample), mirrored up to {side} x {side} px on its own grid. "
                            "Synthetic layout of real pixels; not a real acquisition footprint."),
            "platform": "landsat-7", "constellation": "landsat", "instruments": ["etm+"], "gsd": 28.5,
            "proj:code": f"EPSG:{crs.to_epsg()}", "proj:shape": [side, side],
            "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
            "proj:bbox": list(bounds),
        },
        stac_extensions=EXTENSIONS,
    )
    profile = {"width": side, "height": side, "count": 1, "dtype": "uint8", "crs": crs, "transform": transform}
    for index, (key, name, common, wavelength, fwhm) in enumerate(BANDS):
        band = scene[index][rows[:, None], cols[None, :]]
        with rasterio.open(item_dir / f"{key}.tif", "w", driver="COG", compress="deflate", blocksize=256,
                           overviews="none", **profile) as dst:
            dst.write(band[None])
        del band
        item.add_asset(key, pystac.Asset(
            href=str(item_dir / f"{key}.tif"), media_type=COG, roles=["data"], title=f"Band {name[1:]} ({common})",
            extra_fields={"bands": [{"name": name, "eo:common_name": common, "eo:center_wavelength": wavelength,
                                     "eo:full_width_half_max": fwhm, "data_type": "uint8",
                                     "raster:spatial_resolution": 28.5}]},
        ))
    catalog = pystac.Catalog("stacembed-bench", "Benchmark imagery for stacembed (generated).",
                             title="stacembed benchmark")
    collection = pystac.Collection(
        id=COLLECTION,
        description=("The real Landsat 7 ETM+ pixels of stacembed's sample catalog, mirrored up to a larger "
                     "raster for benchmarks. Pixels: public domain (USGS), via the R package stars."),
        extent=pystac.Extent(pystac.SpatialExtent([item.bbox]), pystac.TemporalExtent([[START, END]])),
        license="other", title=f"Landsat 7 ETM+ benchmark ({side} px)",
        summaries=pystac.Summaries({"platform": ["landsat-7"], "instruments": ["etm+"], "gsd": [28.5]}),
    )
    catalog.add_child(collection)
    collection.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)


def build_timm_weights(card_path: Path, weights: Path, log=print) -> Path:
    """Seeded random weights (seed 0) of the timm model of ``card_path``, as safetensors (cached)."""
    if weights.is_file():
        return weights
    import timm
    import torch
    from safetensors.torch import save_file

    props = json.loads(card_path.read_text())["properties"]
    bands = props["mlm:input"][0]["bands"]
    size = props["mlm:input"][0]["input"]["shape"][-1]
    log(f"data: writing seeded random {props['mlm:architecture']} weights to {weights}")
    options = {"pretrained": False, "in_chans": len(bands), "num_classes": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:  # as stacembed builds it: transformers for the card's chip size
            model = timm.create_model(props["mlm:architecture"], img_size=size, **options)
        except TypeError:
            model = timm.create_model(props["mlm:architecture"], **options)
    _write_atomically(weights, lambda tmp: save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                                     str(tmp)))
    return weights


def build_resnet18_weights(log=print) -> Path:
    """Seeded random weights for ``models/resnet18-landsat.json`` (cached)."""
    return build_timm_weights(RESNET18_CARD, RESNET18_WEIGHTS, log)


def build_vit_s16_weights(log=print) -> Path:
    """Seeded random weights for ``models/vit-s16-landsat.json`` (cached)."""
    return build_timm_weights(VIT_S16_CARD, VIT_S16_WEIGHTS, log)


def build_prithvi_tiny_artifact(log=print) -> Path:
    """``models/prithvi-tiny-landsat.json``'s TorchScript artifact (cached): stacembed's PrithviViT
    at TerraTorch's ``prithvi_eo_tiny`` size, seeded random weights, traced on the card's chip shape."""
    if PRITHVI_TINY_ARTIFACT.is_file():
        return PRITHVI_TINY_ARTIFACT
    import torch

    from stacembed.models.backbones.prithvi import PrithviViT

    props = json.loads(PRITHVI_TINY_CARD.read_text())["properties"]
    shape = props["mlm:input"][0]["input"]["shape"]
    log(f"data: tracing a seeded random Prithvi-EO tiny to {PRITHVI_TINY_ARTIFACT}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PrithviViT(img_size=shape[-1], in_chans=shape[1], **PRITHVI_TINY).eval()
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(2, *shape[1:]), check_trace=False)
    _write_atomically(PRITHVI_TINY_ARTIFACT, lambda tmp: torch.jit.save(traced, str(tmp)))
    return PRITHVI_TINY_ARTIFACT


def _write_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-size", type=int, default=2048)
    parser.add_argument("--size-factors", default="1,4,16")
    args = parser.parse_args()
    for factor in (float(f) for f in args.size_factors.split(",")):
        print(build_catalog(side_for(args.base_size, factor)))
    print(build_resnet18_weights())
    print(build_vit_s16_weights())
    print(build_prithvi_tiny_artifact())


if __name__ == "__main__":
    main()
