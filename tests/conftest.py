"""Shared fixtures: synthetic STAC catalogs in both dialects, on real COGs written with rasterio."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

pytest_plugins = ["servers"]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "catalogs" / "sample" / "catalog.json"
DEMO_CARD = REPO / "stacembed" / "models" / "cards" / "stacembed-demo-landsat.json"

# Asset keys deliberately differ from the demo card's band names (blue, green, red, nir,
# swir16, swir22), so matching must go through band names and common names.
SYNTHETIC_BANDS = [
    ("B1", "blue"), ("B2", "green"), ("B3", "red"), ("B4", "nir"), ("B5", "swir16"), ("B7", "swir22"),
]
EPSG = 32725  # WGS 84 / UTM 25S, where the sample imagery is
RES = 30.0


def pixels(seed: int, height: int, width: int) -> np.ndarray:
    """Deterministic, spatially varying uint16 values (so chips differ from one another)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 1000 + 300 * np.sin(xx / 7.0 + seed) + 200 * np.cos(yy / 11.0)
    return (base + rng.normal(0, 50, (height, width))).clip(1, 65535).astype("uint16")


def write_cog(path: Path, data: np.ndarray, transform: Affine, nodata: float | None = None) -> None:
    count = data.shape[0] if data.ndim == 3 else 1
    with rasterio.open(
        path, "w", driver="COG", width=data.shape[-1], height=data.shape[-2], count=count,
        dtype=data.dtype, crs=f"EPSG:{EPSG}", transform=transform, nodata=nodata,
    ) as ds:
        ds.write(data if data.ndim == 3 else data[None])


def make_item(
    root: Path, item_id: str, *, dialect: str, origin: tuple[float, float], shape: tuple[int, int],
    seed: int, scale: float = 1.0, offset: float = 0.0, nodata: int | None = None,
    nodata_rows: int = 0, with_proj: bool = True, collection: str = "synthetic",
) -> dict[str, Any]:
    """Write one item (JSON + one COG per band) in the STAC 1.0 or 1.1 dialect."""
    height, width = shape
    transform = Affine(RES, 0, origin[0], 0, -RES, origin[1])
    item_dir = root / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    assets = {}
    for i, (key, common) in enumerate(SYNTHETIC_BANDS):
        data = pixels(seed * 10 + i, height, width)
        if nodata is not None and nodata_rows:
            data[:nodata_rows] = nodata
        write_cog(item_dir / f"{key}.tif", data, transform, nodata=None)
        band: dict[str, Any]
        asset: dict[str, Any] = {"href": f"./{key}.tif",
                                 "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                                 "roles": ["data"]}
        if dialect == "1.0":
            asset["eo:bands"] = [{"name": key, "common_name": common}]
            band = {"data_type": "uint16", "scale": scale, "offset": offset}
            if nodata is not None:
                band["nodata"] = nodata
            asset["raster:bands"] = [band]
        else:
            band = {"name": key, "eo:common_name": common, "data_type": "uint16",
                    "raster:scale": scale, "raster:offset": offset}
            if nodata is not None:
                band["nodata"] = nodata
            asset["bands"] = [band]
        assets[key] = asset
    west, north = origin
    east, south = west + width * RES, north - height * RES
    lonlat = _lonlat_box(west, south, east, north)
    properties: dict[str, Any] = {"datetime": f"2024-0{seed % 9 + 1}-15T10:00:00Z", "eo:cloud_cover": 5.0 * seed,
                                  "platform": "synthetic-sat"}
    if with_proj:
        if dialect == "1.0":
            properties.update({"proj:epsg": EPSG, "proj:shape": [height, width],
                               "proj:transform": list(transform)[:6]})
        else:
            properties.update({"proj:code": f"EPSG:{EPSG}", "proj:shape": [height, width],
                               "proj:transform": list(transform)[:6]})
    ext = (["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"] if dialect == "1.0" else
           ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v2.0.0/schema.json"])
    item = {
        "type": "Feature", "stac_version": "1.0.0" if dialect == "1.0" else "1.1.0",
        "stac_extensions": ext if with_proj else ext[1:], "id": item_id, "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [lonlat]},
        "bbox": [min(p[0] for p in lonlat), min(p[1] for p in lonlat),
                 max(p[0] for p in lonlat), max(p[1] for p in lonlat)],
        "properties": properties, "assets": assets, "links": [],
    }
    return item


def _lonlat_box(west: float, south: float, east: float, north: float) -> list[list[float]]:
    from pyproj import Transformer

    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    corners = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    return [list(t.transform(x, y)) for x, y in corners]


def make_catalog(root: Path, items: list[dict[str, Any]], collection: str = "synthetic",
                 dialect: str = "1.1") -> Path:
    """A static catalog (catalog -> collection -> items) with relative links, written as JSON."""
    version = "1.0.0" if dialect == "1.0" else "1.1.0"
    coll_dir = root / collection
    coll_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        item_dir = root / item["id"]
        target = coll_dir / item["id"]
        if item_dir.exists() and item_dir != target:
            item_dir.rename(target)
        item["links"] = [{"rel": "collection", "href": "../collection.json"},
                         {"rel": "parent", "href": "../collection.json"},
                         {"rel": "root", "href": "../../catalog.json"}]
        (target / f"{item['id']}.json").write_text(json.dumps(item))
    bboxes = [i["bbox"] for i in items]
    coll = {
        "type": "Collection", "stac_version": version, "id": collection, "description": "synthetic test data",
        "license": "CC0-1.0",
        "extent": {"spatial": {"bbox": [[min(b[0] for b in bboxes), min(b[1] for b in bboxes),
                                         max(b[2] for b in bboxes), max(b[3] for b in bboxes)]]},
                   "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]}},
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
        + [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json"} for i in items],
    }
    (coll_dir / "collection.json").write_text(json.dumps(coll))
    catalog = {"type": "Catalog", "stac_version": version, "id": "root", "description": "test",
               "links": [{"rel": "root", "href": "./catalog.json"},
                         {"rel": "child", "href": f"./{collection}/collection.json"}]}
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


@pytest.fixture
def synthetic_catalog(tmp_path_factory):
    """Factory: ``synthetic_catalog(dialect, n_items=2, **item_kwargs) -> catalog.json path``."""

    def build(dialect: str = "1.1", n_items: int = 2, shape=(100, 130), **kwargs) -> Path:
        root = tmp_path_factory.mktemp(f"stac{dialect}")
        items = [
            make_item(root, f"item-{i}", dialect=dialect, origin=(500000.0 + i * 5000, 9100000.0),
                      shape=shape, seed=i + 1, **kwargs)
            for i in range(n_items)
        ]
        return make_catalog(root, items, dialect=dialect)

    return build


@pytest.fixture
def cli():
    """Invoke the click CLI in-process; returns the click Result."""
    from stacembed.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """The suite's own ``STACEMBED_CACHE``, never the user's, and no CPU calibration.

    A calibrated run writes the same bytes as an uncalibrated one (``stacembed.calibration``), but
    it races configurations on the first run of every model, which would slow the suite and make
    its timing depend on the machine; tests/test_calibration.py turns it on for itself.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STACEMBED_CACHE", str(tmp_path_factory.mktemp("stacembed-cache")))
        patch.setenv("STACEMBED_CALIBRATE", "0")
        yield


@pytest.fixture(autouse=True)
def _torch_float32_precision_kept():
    """Keep one test's library imports from changing the arithmetic of the next ones.

    Importing TerraTorch (its clay_v15 module) sets torch's float32 matmul precision to "medium"
    for the whole process, and oneDNN then multiplies float32 in bfloat16 on the CPU. stacembed
    undoes that where it imports TerraTorch; tests that import it directly are undone here, so
    that the bit-for-bit comparisons of later tests see torch's default ("highest").
    """
    yield
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_float32_matmul_precision() != "highest":
        torch.set_float32_matmul_precision("highest")
