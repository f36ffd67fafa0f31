"""Clay v1.5 by name: its published encoder is a torch.export program taking one dict (issue 18).

Clay's program (Clay-foundation/model@a5790cef claymodel/finetune/embedder/factory.py 107-139,
216-248) takes ``{pixels [B, C, H, W], time [B, 4], latlon [B, 4], gsd [1], waves [C]}`` with a
dynamic batch of 2-1000 and 1-10 bands, and returns the class token ``patches[:, 0, :]``. The
real file (1.2 GB) cannot be downloaded here, so a stand-in with the same signature is exported
the way factory.py exports Clay's (same keys, shapes, dtypes and dynamic dimensions), and its
class token *echoes its inputs*: from each chip's embedding the test reads back exactly what the
program received. The expected values are computed here independently of stacembed: pixels read
with rasterio and z-scored with Clay's metadata.yaml statistics, time and lat/lon encoded with
Clay's formulas (how-to-embed.ipynb 239-264) from the items' datetimes and the chip centres
(pyproj), the pixel size of the items' grid, the items' wavelengths.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import make_catalog, pixels
from pyproj import Transformer
from torch import nn
from torch.export import Dim

from stacembed.embed import Embedder
from stacembed.errors import ModelError
from stacembed.models import create_backbone, load_card
from stacembed.models.backbones.datacube import DatacubeProgram, ProgramInputs
from stacembed.models.registry import CARDS_DIR
from stacembed.models.weights import create_with_weights, load_artifact, resolve_weights

CLAY_CARD = CARDS_DIR / "clay-v1.5.json"
SIZE = 256  # the published program's fixed chip size
RES = 10.0
BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
COMMON = ["blue", "green", "red", "rededge", "rededge", "rededge", "nir", "nir08", "swir16", "swir22"]
# Clay-foundation/model@a5790cef configs/metadata.yaml 19-51 (sentinel-2-l2a, L2A digital numbers, um).
MEAN = np.array([1105, 1355, 1552, 1887, 2422, 2630, 2743, 2785, 2388, 1835], "float64")
STD = np.array([1809, 1757, 1888, 1870, 1732, 1697, 1742, 1648, 1470, 1379], "float64")
CLAY_WAVES = [0.493, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19]
# What the test items state (Planetary Computer's Sentinel-2 values; none for B12: the card's 2.19 fills it).
STATED = [0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 1.61, None]
C = len(BANDS)
DIM = 4 + 4 + 1 + 3 * C + 1  # time, latlon, gsd, waves, band means, band pattern sums, batch size


# -- the stand-in: Clay's signature, an echo of its inputs as the class token ---------------------

class EchoEncoder(nn.Module):
    """Takes Clay's datacube dict, builds a token sequence [cls, patches] and returns ``[:, 0, :]``
    as Clay's EmbeddingEncoder does; its class token is the inputs it was given."""

    def __init__(self, size: int = SIZE, width: int | None = None) -> None:
        super().__init__()
        self.width = width  # pad the class token with zeros to this many dimensions (Clay's 1024)
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("pattern", torch.randint(0, 2, (size, size), generator=gen).float() * 2 - 1)
        self.scale = nn.Parameter(torch.randn(1, generator=gen))

    def forward(self, datacube):
        cube, time, latlon, gsd, waves = (datacube["pixels"], datacube["time"], datacube["latlon"],
                                          datacube["gsd"], datacube["waves"])
        b = cube.shape[0]
        means = cube.mean(dim=(2, 3))
        pattern = (cube * self.pattern).mean(dim=(2, 3))
        seen = torch.ones_like(time[:, :1]) * b
        cls = torch.cat([time, latlon, gsd.expand(b, 1), waves.expand(b, -1), means, pattern, seen], dim=1)
        if self.width:
            cls = nn.functional.pad(cls, (0, self.width - cls.shape[1]))
        patches = cls[:, None, :] * self.scale + cube.mean(dim=1).reshape(b, -1, 1)[:, :16]  # stand-in patch tokens
        tokens = torch.cat([cls[:, None, :], patches], dim=1)
        return tokens[:, 0, :]


def decode(embedding: np.ndarray) -> dict[str, np.ndarray]:
    parts = np.split(np.asarray(embedding, "float64"), np.cumsum([4, 4, 1, C, C, C]), axis=-1)
    names = ["time", "latlon", "gsd", "waves", "means", "pattern", "batch"]
    return dict(zip(names, parts, strict=True))


def export_stand_in(path: Path, size: int = SIZE, max_batch: int = 1000, width: int | None = None) -> Path:
    """As factory.py 216-248 exports Clay's encoder: one dict argument, Dim batch 2..max, bands 1..10."""
    model = EchoEncoder(size, width).eval()
    example = {"pixels": torch.randn(2, 3, size, size), "time": torch.randn(2, 4), "latlon": torch.randn(2, 4),
               "waves": torch.randn(3), "gsd": torch.randn(1)}
    batch, bands = Dim("batch_size", min=2, max=max_batch), Dim("channel_bands", min=1, max=10)
    shapes = {"datacube": {"pixels": {0: batch, 1: bands}, "time": {0: batch}, "latlon": {0: batch},
                           "waves": {0: bands}, "gsd": {0: Dim.STATIC}}}
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=shapes, strict=True), str(path))
    return path


def clay_card_for(program: Path, directory: Path, size: int = SIZE, **properties) -> Path:
    """A copy of the built-in clay-v1.5 card whose model asset is ``program`` (href and checksum)."""
    item = json.loads(CLAY_CARD.read_text())
    asset = item["assets"]["model"]
    asset["href"] = program.name if program.parent == directory else str(program)
    asset["file:checksum"] = "1220" + hashlib.sha256(program.read_bytes()).hexdigest()
    asset["file:size"] = program.stat().st_size
    props = item["properties"]
    props["mlm:output"][0]["result"]["shape"] = [-1, DIM]
    props["mlm:input"][0]["input"]["shape"][-2:] = [size, size]
    props.update(properties)
    path = directory / "clay-stand-in.json"
    path.write_text(json.dumps(item))
    return path


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    return export_stand_in(tmp_path_factory.mktemp("clay") / "clay-v1.5-encoder-cpu.pt2")


# -- a Sentinel-2 L2A catalog ---------------------------------------------------------------------

ITEMS = {  # id: (EPSG, origin (west, north), (rows, cols) in pixels, datetime)
    "s2-north": (32633, (400000.0, 5000000.0), (SIZE, 5 * SIZE), "2024-07-15T10:37:12Z"),
    "s2-south": (32755, (300000.0, 6200000.0), (SIZE, SIZE), "2023-01-01T23:59:30Z"),  # ISO week 52 of 2022
}


def s2_item(root: Path, item_id: str, seed: int) -> dict:
    epsg, (west, north), (rows, cols), when = ITEMS[item_id]
    transform = Affine(RES, 0, west, 0, -RES, north)
    folder = root / item_id
    folder.mkdir(parents=True)
    assets = {}
    for i, (band, common, stated) in enumerate(zip(BANDS, COMMON, STATED, strict=True)):
        with rasterio.open(folder / f"{band}.tif", "w", driver="COG", width=cols, height=rows, count=1,
                           dtype="uint16", crs=f"EPSG:{epsg}", transform=transform) as ds:
            ds.write(pixels(seed * 10 + i, rows, cols)[None])
        meta = {"name": band, "eo:common_name": common, "data_type": "uint16", "raster:scale": 0.0001,
                "raster:offset": 0.0}
        if stated is not None:
            meta["eo:center_wavelength"] = stated
        assets[band] = {"href": f"./{band}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data"], "bands": [meta]}
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    east, south = west + cols * RES, north - rows * RES
    ring = [list(to_lonlat.transform(x, y)) for x, y in
            [(west, south), (east, south), (east, north), (west, north), (west, south)]]
    return {
        "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "synthetic",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/raster/v2.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)],
        "properties": {"datetime": when, "platform": "sentinel-2a", "proj:code": f"EPSG:{epsg}",
                       "proj:shape": [rows, cols], "proj:transform": list(transform)[:6]},
        "assets": assets, "links": [],
    }


@pytest.fixture(scope="module")
def s2_catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s2")
    return make_catalog(root, [s2_item(root, item_id, seed) for seed, item_id in enumerate(ITEMS, 1)])


# -- what Clay's program must receive, computed independently -------------------------------------

def clay_time(when: str) -> list[float]:
    """how-to-embed.ipynb 239-243: week = ISO week x 2 pi / 52, hour = date.hour x 2 pi / 24."""
    date = datetime.fromisoformat(when.replace("Z", "+00:00"))
    week, hour = date.isocalendar().week * 2 * math.pi / 52, date.hour * 2 * math.pi / 24
    return [math.sin(week), math.cos(week), math.sin(hour), math.cos(hour)]


def clay_latlon(lat: float, lon: float) -> list[float]:
    """how-to-embed.ipynb 252-256: degrees x pi / 180; [sin lat, cos lat, sin lon, cos lon]."""
    lat, lon = lat * math.pi / 180, lon * math.pi / 180
    return [math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)]


def expected_chip(catalog: Path, item_id: str, col_off: int, row_off: int) -> dict:
    """The datacube entries of one chip: z-scored pixels, time, latlon (chip centre), gsd, waves."""
    epsg, (west, north), _, when = ITEMS[item_id]
    folder = catalog.parent / "synthetic" / item_id
    window = rasterio.windows.Window(col_off, row_off, SIZE, SIZE)
    dn = []
    for band in BANDS:
        with rasterio.open(folder / f"{band}.tif") as ds:
            dn.append(ds.read(1, window=window).astype("float64"))
    pixels_ = ((np.stack(dn) - MEAN[:, None, None]) / STD[:, None, None]).astype("float32")
    x = west + (col_off + SIZE / 2) * RES
    y = north - (row_off + SIZE / 2) * RES
    lon, lat = Transformer.from_crs(epsg, 4326, always_xy=True).transform(x, y)
    waves = [s if s is not None else card for s, card in zip(STATED, CLAY_WAVES, strict=True)]
    return {"pixels": pixels_, "time": clay_time(when), "latlon": clay_latlon(lat, lon), "gsd": RES, "waves": waves}


def datacube_of(chips: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixels": torch.from_numpy(np.stack([c["pixels"] for c in chips])),
            "time": torch.tensor([c["time"] for c in chips], dtype=torch.float32),
            "latlon": torch.tensor([c["latlon"] for c in chips], dtype=torch.float32),
            "waves": torch.tensor(chips[0]["waves"], dtype=torch.float32),
            "gsd": torch.tensor([chips[0]["gsd"]], dtype=torch.float32)}


# -- the run ------------------------------------------------------------------------------------

def test_stacembed_run_feeds_clays_program_the_datacube_clay_builds(program, s2_catalog, cli, tmp_path):
    card = clay_card_for(program, program.parent)
    out = tmp_path / "out"
    # Batches of 4: s2-north's 5 chips go as 4 + 1, s2-south's single chip alone; no CPU calibration.
    result = cli("run", "--catalog", s2_catalog, "--model", card, "--out", out, "--batch-size", 4,
                 "--threads", 1, "--streams", 1, "--offline", "-q")
    assert result.exit_code == 0, result.output
    reference = torch.export.load(str(program)).module()
    eager = EchoEncoder().eval()
    eager.load_state_dict(torch.export.load(str(program)).state_dict)
    batches = {"s2-north": [4, 4, 4, 4, 1], "s2-south": [1]}
    for item_id, sizes in batches.items():
        table = gpd.read_parquet(next(out.glob(f"*/{item_id}/{item_id}.parquet"))).sort_values(["row_off", "col_off"])
        assert len(table) == len(sizes)
        got = np.stack(table.embedding.map(np.asarray)).astype("float64")
        assert got.shape == (len(sizes), DIM)
        chips = [expected_chip(s2_catalog, item_id, r.col_off, r.row_off) for r in table.itertuples()]
        for row, chip, size in zip(got, chips, sizes, strict=True):
            seen = decode(row)
            np.testing.assert_allclose(seen["time"], chip["time"], atol=1e-6)
            np.testing.assert_allclose(seen["latlon"], chip["latlon"], atol=1e-6)
            assert seen["gsd"] == pytest.approx([RES])
            np.testing.assert_allclose(seen["waves"], chip["waves"], rtol=1e-6)
            np.testing.assert_allclose(seen["means"], chip["pixels"].mean(axis=(1, 2)), atol=1e-5)
            np.testing.assert_allclose(seen["pattern"], (chip["pixels"] * eager.pattern.numpy()).mean(axis=(1, 2)),
                                       atol=1e-5)
            # A batch of one reached the program as two (its minimum); the others as they were.
            assert seen["batch"] == [max(size, 2)]
        # The embeddings are the program's class token for the datacube built here, batched as the run did.
        expected = []
        for first in range(0, len(chips), 4):
            part = chips[first:first + 4]
            padded = part + part[-1:] * (2 - len(part))
            with torch.no_grad():
                cls = reference(datacube_of(padded))[:len(part)]
                assert torch.allclose(cls, eager(datacube_of(padded))[:len(part)], atol=1e-6)
            expected.append(cls.numpy())
        np.testing.assert_allclose(got, np.concatenate(expected), rtol=1e-5, atol=1e-5)
    written = json.loads(next(out.glob("*/s2-north/s2-north.json")).read_text())
    assert written["properties"]["emb:runtime_parameters"]["wavelengths"] == STATED


def test_clay_v1_5_runs_by_name(s2_catalog, cli, tmp_path):
    """`stacembed run --model clay-v1.5`: the built-in card as it is, its .pt2 given with --weights (a
    stand-in of Clay's width, 1024, as the real file cannot be downloaded here)."""
    program = export_stand_in(tmp_path / "clay-v1.5-encoder-cpu.pt2", width=1024)
    out = tmp_path / "out"
    result = cli("run", "--catalog", s2_catalog, "--model", "clay-v1.5", "--weights", program, "--out", out,
                 "--threads", 1, "--streams", 1, "--offline", "-q")
    assert result.exit_code == 0, result.output
    table = gpd.read_parquet(next(out.glob("*/s2-south/s2-south.parquet")))
    (row,) = np.stack(table.embedding.map(np.asarray))
    assert row.shape == (1024,) and not row[DIM:].any()
    seen = decode(row[:DIM])
    chip = expected_chip(s2_catalog, "s2-south", 0, 0)
    np.testing.assert_allclose(seen["time"], chip["time"], atol=1e-6)
    np.testing.assert_allclose(seen["latlon"], chip["latlon"], atol=1e-6)
    assert seen["gsd"] == [RES] and seen["batch"] == [2]
    written = json.loads(next(out.glob("*/model/*.json")).read_text())
    assert written["properties"]["mlm:name"] == "clay-v1.5"


# -- the adapter ---------------------------------------------------------------------------------

def test_a_single_chip_is_padded_and_unknowns_are_clays_zeros(program, tmp_path):
    """Without a run's context (the engine's probe pass, a direct call) time and lat/lon are 0, Clay's
    'unknown' (datamodule.py 81-84), gsd the card's 10 m and waves the card's (metadata.yaml)."""
    card = load_card(str(clay_card_for(program, program.parent)))
    embedder = Embedder.from_card(card, resolve_weights(card, offline=True), torch.device("cpu"))
    assert isinstance(embedder.model.backbone, DatacubeProgram)
    assert embedder.context_inputs == ("temporal_coords", "acquisition_hour", "location_coords", "gsd", "wavelengths")
    assert embedder.model.backbone.min_batch == 2 and embedder.model.backbone.max_batch == 1000
    rng = np.random.default_rng(0)
    chips = rng.normal(0.2, 0.05, (3, C, SIZE, SIZE)).astype("float32")
    one = decode(embedder(chips[:1])[0])
    assert one["batch"] == [2]
    assert not one["time"].any() and not one["latlon"].any()
    assert one["gsd"] == pytest.approx([10.0])
    np.testing.assert_allclose(one["waves"], CLAY_WAVES, rtol=1e-6)
    scaled = (chips[0] * 1e4 - MEAN[:, None, None]) / STD[:, None, None]  # (10000 x - mean) / std
    np.testing.assert_allclose(one["means"], scaled.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    # With a context: the first acquisition's ISO week and hour, each chip's centre, the batch's pixel size.
    context = {"temporal_coords": np.array([[[2024, 197], [2024, 300]]] * 3, "float32"),  # 2024-07-15: week 29
               "acquisition_hour": np.array([[10.62, 3.0]] * 3, "float32"),
               "location_coords": np.array([[45.1, 7.6], [-33.9, 151.2], [0.0, -179.5]], "float32"),
               "gsd": np.full(3, 20.0, "float32"),
               "wavelengths": np.tile(np.array([*CLAY_WAVES[:-1], np.nan], "float32"), (3, 1))}
    three = [decode(row) for row in embedder(chips, context)]
    for seen, (lat, lon) in zip(three, context["location_coords"], strict=True):
        np.testing.assert_allclose(seen["time"], clay_time("2024-07-15T10:37:00Z"), atol=1e-6)
        np.testing.assert_allclose(seen["latlon"], clay_latlon(float(lat), float(lon)), atol=1e-6)
        assert seen["gsd"] == [20.0] and seen["batch"] == [3]
    with pytest.raises(ModelError, match="different pixel sizes"):
        embedder(chips[:2], {**{k: v[:2] for k, v in context.items()}, "gsd": np.array([10, 20], "float32")})


def test_batches_beyond_the_programs_maximum_go_through_in_parts(tmp_path):
    program = export_stand_in(tmp_path / "small.pt2", size=16, max_batch=3)
    card = load_card(str(clay_card_for(program, tmp_path, size=16)))
    model = create_with_weights(card, program)
    assert (model.min_batch, model.max_batch) == (2, 3)
    x = torch.randn(7, C, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (7, DIM)
    assert [float(decode(row)["batch"][0]) for row in out.numpy()] == [3, 3, 3, 3, 3, 3, 2]  # 3 + 3 + (1 -> 2)
    np.testing.assert_allclose(np.stack([decode(r)["means"] for r in out.numpy()]), x.mean(dim=(2, 3)).numpy(),
                               atol=1e-6)
    with pytest.raises(ModelError, match="refused the input"):
        model(torch.randn(2, C, 32, 32))  # exported for 16 x 16 chips


def test_the_card_states_the_order_of_each_list(program, tmp_path):
    """stacembed:program_inputs is what decides: here the other lat/lon order (see the card's
    stacembed:unverified, 'latlon order') and a constant hour."""
    inputs = {"pixels": "pixels", "time": ["sin_week", "cos_week", "sin_hour", "cos_hour"],
              "latlon": ["sin_lon", "cos_lon", "sin_lat", "cos_lat"], "gsd": "gsd", "waves": "wavelengths"}
    card = load_card(str(clay_card_for(program, program.parent, **{"stacembed:program_inputs": inputs})))
    model = create_with_weights(card, program)
    place = torch.tensor([[45.0, 7.0]])
    with torch.no_grad():
        seen = decode(model(torch.zeros(1, C, SIZE, SIZE), location_coords=place)[0].numpy())
    lat_lon = clay_latlon(45.0, 7.0)
    np.testing.assert_allclose(seen["latlon"], lat_lon[2:] + lat_lon[:2], atol=1e-6)


def test_what_cannot_run_is_a_one_line_error(program, tmp_path):
    path = clay_card_for(program, program.parent)
    data = json.loads(path.read_text())
    del data["properties"]["stacembed:program_inputs"]
    path.write_text(json.dumps(data))
    card = load_card(str(path))
    assert load_artifact(program, card.artifact_type) is None  # takes a dict: only its card can feed it
    with pytest.raises(ModelError, match="stacembed:program_inputs"):
        create_with_weights(card, program)
    wrong = {"pixels": "pixels", "time": ["sin_week"], "latlon": ["lat", "lon"], "gsd": "gsd", "bands": "wavelengths"}
    card = load_card(str(clay_card_for(program, program.parent, **{"stacembed:program_inputs": wrong})))
    with pytest.raises(ModelError, match=r"keys \['gsd', 'latlon', 'pixels', 'time', 'waves'\]"):
        create_with_weights(card, program)
    bad = dict(wrong, waves="wavelengths", time=["day_of_week"])
    del bad["bands"]
    card = load_card(str(clay_card_for(program, program.parent, **{"stacembed:program_inputs": bad})))
    with pytest.raises(ModelError, match="day_of_week"):
        ProgramInputs.from_card(card)
    with pytest.raises(ModelError, match="no untrained network"):
        create_backbone(load_card(str(CLAY_CARD)))


# -- the engine's context ------------------------------------------------------------------------

def test_chip_context_gives_the_acquisition_hour_and_the_ground_sampling_distance():
    from types import SimpleNamespace

    from rasterio.crs import CRS

    from stacembed.chips import ChipGrid
    from stacembed.grid import Grid
    from stacembed.temporal import chip_context

    def series(when: str):
        return SimpleNamespace(items=[SimpleNamespace(datetime=datetime.fromisoformat(when), common_metadata=None)])

    names = ("acquisition_hour", "gsd", "temporal_coords")
    utm = ChipGrid(Grid(CRS.from_epsg(32633), Affine(10, 0, 400000, 0, -10, 5000000), 512, 512), 256, 256)
    chips = list(utm)
    got = chip_context(names, series("2024-07-15T10:37:12+00:00"), utm, chips)
    np.testing.assert_allclose(got["acquisition_hour"], [[10 + 37 / 60 + 12 / 3600]] * 4, rtol=1e-6)
    assert got["gsd"].tolist() == [10.0] * 4 and got["temporal_coords"].tolist() == [[[2024, 197]]] * 4
    # State plane in US feet: 10 ft pixels are 3.048 m.
    feet = ChipGrid(Grid(CRS.from_epsg(2263), Affine(10, 0, 980000, 0, -10, 200000), 256, 256), 256, 256)
    assert chip_context(("gsd",), series("2024-01-01T00:00:00+00:00"), feet, list(feet))["gsd"] == pytest.approx(
        [3.048], rel=1e-4)
    # Geographic: a 0.0001 degree pixel at 45 N is ~7.9 m wide and ~11.1 m high (mean ~9.5 m).
    degrees = ChipGrid(Grid(CRS.from_epsg(4326), Affine(1e-4, 0, 7.0, 0, -1e-4, 45.0128), 256, 256), 256, 256)
    gsd = chip_context(("gsd",), series("2024-01-01T00:00:00+00:00"), degrees, list(degrees))["gsd"][0]
    width = 1e-4 * math.pi / 180 * 6378137 * math.cos(math.radians(45.0))
    height = 1e-4 * math.pi / 180 * 6367449  # the mean meridional radius
    assert gsd == pytest.approx((width + height) / 2, rel=5e-3)
