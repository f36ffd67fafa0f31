"""Make the built-in demo model card ``stacembed-demo-landsat`` and its weights.

The demo model lets ``stacembed run --out out/`` work offline on a fresh machine: a tiny timm
ResNet (``test_resnet``, 0.37 M parameters, 96-d embeddings) for the six Landsat 7 ETM+
reflective bands of the bundled sample catalog. Its weights are a *seeded random
initialisation* (seed 0), saved as safetensors: they exercise the whole weights path (card
asset -> SHA-256 check -> strict state-dict load) but carry no learned meaning, so the card
says ``mlm:pretrained: false``. For meaningful embeddings use a pretrained card.

The z-score statistics are the per-band mean and standard deviation of the sample scene
(``catalogs/sample``, digital numbers 0-255), computed by this script.

Run from the repository root:  python catalogs/models/make_demo_model.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
import timm
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CARDS = ROOT / "stacembed" / "models" / "cards"
NAME = "stacembed-demo-landsat"
ARCH = "test_resnet"
BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
WAVELENGTHS = [0.485, 0.56, 0.66, 0.835, 1.65, 2.22]
CHIP = 64


def band_statistics() -> tuple[list[float], list[float]]:
    """Mean and standard deviation per band over every pixel of the sample catalog."""
    catalog = pystac.Catalog.from_file(str(ROOT / "catalogs" / "sample" / "catalog.json"))
    sums = np.zeros(len(BANDS))
    squares = np.zeros(len(BANDS))
    count = 0
    for item in catalog.get_items(recursive=True):
        for i, key in enumerate(["blue", "green", "red", "nir08", "swir16", "swir22"]):
            with rasterio.open(item.assets[key].get_absolute_href()) as ds:
                values = ds.read(1).astype("float64")
            sums[i] += values.sum()
            squares[i] += (values**2).sum()
        count += values.size
    mean = sums / count
    std = np.sqrt(squares / count - mean**2)
    return [round(float(m), 3) for m in mean], [round(float(s), 3) for s in std]


def make_weights(path: Path) -> tuple[str, int]:
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, in_chans=len(BANDS), num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    params = sum(p.numel() for p in model.parameters())
    return hashlib.sha256(path.read_bytes()).hexdigest(), params


def card(mean: list[float], std: list[float], sha256: str, size: int, params: int, dims: int) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/mlm/v1.5.2/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
        ],
        "id": NAME,
        "geometry": None,
        "properties": {
            "datetime": "2026-11-25T00:00:00Z",
            "description": (
                "Demo backbone for the bundled Landsat 7 ETM+ sample: timm test_resnet with 6 input "
                "bands and 96-d pooled embeddings. Weights are a seeded random initialisation "
                "(seed 0), NOT trained: use it to try the pipeline, not for science."
            ),
            "mlm:name": NAME,
            "mlm:architecture": ARCH,
            "mlm:framework": "pytorch",
            "mlm:framework_version": torch.__version__.split("+")[0],
            "mlm:tasks": ["similarity-search"],
            "mlm:pretrained": False,
            "mlm:total_parameters": params,
            "mlm:accelerator": None,
            "mlm:accelerator_constrained": False,
            "mlm:batch_size_suggestion": 16,
            "mlm:input": [{
                "name": "landsat7-etm-reflective",
                "bands": BANDS,
                "input": {
                    "shape": [-1, len(BANDS), CHIP, CHIP],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": [{"type": "z-score", "mean": m, "stddev": s} for m, s in zip(mean, std)],
                "resize_type": None,
            }],
            "mlm:output": [{
                "name": "embedding",
                "tasks": ["similarity-search"],
                "result": {"shape": [-1, dims], "dim_order": ["batch", "embedding"], "data_type": "float32"},
                "description": "Global-average-pooled pre-logits features (timm num_classes=0).",
            }],
        },
        "links": [],
        "assets": {
            "weights": {
                "href": f"./{NAME}.safetensors",
                "type": "application/octet-stream; application=safetensors",
                "title": "Seeded random-initialisation weights (safetensors)",
                "roles": ["mlm:model", "mlm:weights"],
                "mlm:artifact_type": "safetensors.torch.save_file",
                "file:size": size,
                "file:checksum": "1220" + sha256,
                "raster:bands": [{"name": b, "data_type": "uint8"} for b in BANDS],
                "eo:bands": [{"name": b, "common_name": b,
                              "center_wavelength": w} for b, w in zip(BANDS, WAVELENGTHS)],
            }
        },
    }


def main() -> None:
    CARDS.mkdir(parents=True, exist_ok=True)
    weights = CARDS / f"{NAME}.safetensors"
    sha256, params = make_weights(weights)
    mean, std = band_statistics()
    dims = timm.create_model(ARCH, pretrained=False, in_chans=len(BANDS), num_classes=0).num_features
    data = card(mean, std, sha256, weights.stat().st_size, params, dims)
    (CARDS / f"{NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {CARDS / (NAME + '.json')} and {weights.name} ({weights.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
