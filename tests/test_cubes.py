"""Embed2Scale / SSL4EO-S12 v1.1 sample cubes as inputs (``resolve.cubes``): folder -> run -> CSV.

The cubes are written here with xarray as zipped Zarr v2 stores in the layouts of the public loaders
(DLR-MF-DAS/embed2scale-challenge-supplement@272c911e8fb527d265de9be18fc81e16208ca0b6
``data_loading_submission_demo/challenge_dataset.py``: ``DATA/<modality>/<id>.zarr.zip``, one sample
per file; DLR-MF-DAS/SSL4EO-S12-v1.1@33ac87889fcf1f9c2ee258fb286c4a5d6424eeb3 ``README.md``: several
samples per file, ``bands (sample, time, band, y, x)`` with ``band``/``sample``/``time``/``x``/``y``
coordinates and ``center_lat``, ``center_lon``, ``cloud_mask``, ``crs``, ``file_id``, ``sample_id``,
``time_``, ``x_``, ``y_``). Every embedding is checked against a forward pass on pixels read
independently with xarray; georeferencing against what ``crs`` and ``x_``/``y_`` say; the NeuCo-Bench
CSV against means computed here.
"""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.warp
import torch
from conftest import DEMO_CARD
from stac_validation import validate_tree
from torch import nn

from stacembed import RunConfig, run
from stacembed.embeddings import read_geoparquet
from stacembed.exports import export_neuco
from stacembed.models import register_architecture
from stacembed.pipeline import plan

zarr = pytest.importorskip("zarr", reason="sample cubes need zarr (pip install 'stacembed[zarr]')")
xr = pytest.importorskip("xarray")

S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
CARD_S2 = ["B02", "B03", "B04", "B08"]
S2_STATS = [(1500.0, 600.0)] * 4
S1_STATS = [(-12.0, 5.0), (-19.0, 5.0)]
SIZE, CHIP, SEASONS = 64, 32, 4
HASHES = ["d02fd64ab4c9e1", "7642bfbee4a0f3"]  # the challenge's ids are hashes of this kind
SSL4EO_SAMPLES = ["0080717", "0060573", "0179869"]


class TinyCube(nn.Module):
    """A small network over every band (and time step: flattened into channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.flatten(1, -3))).mean(dim=(2, 3))


@register_architecture("test_tiny_cube")
def _tiny(card):
    shape = card.item["properties"]["mlm:input"][0]["input"]["shape"]
    steps = shape[2] if len(shape) == 5 else 1
    return TinyCube(len(card.bands) * steps)


# --- cubes ---------------------------------------------------------------------------------------

def place(index: int) -> tuple[int, float, float]:
    """(EPSG, west, north) of the sample ``index``: UTM zones of both hemispheres."""
    return (32633, 400000.0 + 5000 * index, 5000000.0) if index % 2 == 0 else (32733, 600000.0, 7000000.0 + 320 * index)


def write_cube(path: Path, samples: list[str], bands: list[str], *, seed: int, first: int = 0,
               georeferenced: bool = True, pixels: str = "bands", sample_chunks: int = 1) -> None:
    """A sample cube as the loaders read it: a zipped Zarr v2 store of ``bands`` (sample, time, band, y, x)."""
    rng = np.random.default_rng(seed)
    n = len(samples)
    s1 = bands[0].lower() == "vv"
    values = rng.normal(-14, 4, (n, SEASONS, len(bands), SIZE, SIZE)).astype("float16") if s1 else \
        rng.integers(0, 4000, (n, SEASONS, len(bands), SIZE, SIZE)).astype("int16")
    variables: dict = {pixels: (("sample", "time", "band", "y", "x"), values)}
    places = [place(first + i) for i in range(n)]
    meta = {
        "center_lat": (("sample",), np.linspace(40, 50, n)),
        "center_lon": (("sample",), np.linspace(10, 20, n)),
        "cloud_mask": (("sample", "time", "y", "x"), (rng.random((n, SEASONS, SIZE, SIZE)) < 0.2).astype("uint8")),
        "file_id": (("sample", "time"), np.array([[f"2020{3 * t + 1:02d}1{first + i}T101031_2020_T33TXX"
                                                    for t in range(SEASONS)] for i in range(n)])),
        "sample_id": (("sample", "time"), np.array([[f"{s}_{t}" for t in range(SEASONS)] for s in samples])),
        "time_": (("sample", "time"), np.array([[np.datetime64(f"2020-{3 * t + 1:02d}-1{first + i}T10:10:31")
                                                  for t in range(SEASONS)] for i in range(n)], "datetime64[ns]")),
    }
    variables.update(meta)
    if georeferenced:
        variables["crs"] = (("sample",), np.array([p[0] for p in places], "int64"))
        variables["x_"] = (("sample", "x"), np.array([w + 10 * (np.arange(SIZE) + 0.5) for _, w, _ in places]))
        variables["y_"] = (("sample", "y"), np.array([nn_ - 10 * (np.arange(SIZE) + 0.5) for _, _, nn_ in places]))
    ds = xr.Dataset(variables, coords={"band": bands, "sample": samples, "time": np.arange(SEASONS),
                                       "x": np.arange(SIZE), "y": np.arange(SIZE)})
    directory = path.with_suffix("")  # x.zarr
    ds.to_zarr(directory, zarr_format=2, consolidated=True, mode="w",
               encoding={pixels: {"chunks": (sample_chunks, 1, len(bands), SIZE, SIZE)}})
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:  # as zarr-python 2's ZipStore: the store's keys as names
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(directory).as_posix())
    shutil.rmtree(directory)


def challenge_data(root: Path, *, s1_hashes: list[str] = HASHES, **options) -> Path:
    """``DATA/s2l2a`` and ``DATA/s1``: one sample per file, named by its hash."""
    data = root / "DATA"
    for i, sample in enumerate(HASHES):
        write_cube(data / "s2l2a" / f"{sample}.zarr.zip", ["0"], S2_NAMES, seed=i, first=i, **options)
    for i, sample in enumerate(s1_hashes):
        write_cube(data / "s1" / f"{sample}.zarr.zip", ["0"], ["vv", "vh"], seed=10 + i, first=i, **options)
    return data


def cube_array(path: Path, name: str = "bands") -> xr.DataArray:
    """The cube read with xarray alone (not stacembed's reader)."""
    return xr.open_zarr(zarr.storage.ZipStore(path, mode="r"), consolidated=True)[name].load()


def write_card(path: Path, *, s1: bool = False, time_steps: int = 1) -> Path:
    data = json.loads(DEMO_CARD.read_text())
    props = data["properties"]
    props["mlm:name"], props["mlm:architecture"] = "tiny-cube", "test_tiny_cube"

    def entry(name, bands, stats):
        shape = [-1, len(bands), *([time_steps] if time_steps > 1 else []), CHIP, CHIP]
        order = ["batch", "bands", *(["time"] if time_steps > 1 else []), "height", "width"]
        return {"name": name, "bands": bands, "input": {"shape": shape, "dim_order": order, "data_type": "float32"},
                "value_scaling": [{"type": "z-score", "mean": m, "stddev": s} for m, s in stats]}

    props["mlm:input"] = [entry("S2L2A", CARD_S2, S2_STATS)]
    if s1:
        props["mlm:input"].append({**entry("S1GRD", ["vv", "vh"], S1_STATS), "stacembed:sar_db": True})
    props["mlm:output"][0]["result"]["shape"] = [-1, 8]
    data["assets"] = {k: v for k, v in data["assets"].items() if "mlm:model" not in v.get("roles", ())}
    path.write_text(json.dumps(data))
    return path


def forward(chips: np.ndarray, stats: list[tuple[float, float]]) -> np.ndarray:
    """The seeded model on chips ``(n, band, [time,] y, x)`` of measurements, z-scored as the card says."""
    shape = (len(stats), *([1] * (chips.ndim - 2)))
    mean, std = (np.array([s[k] for s in stats], "float64").reshape(shape) for k in (0, 1))
    x = ((chips.astype("float64") - mean) / std).astype("float32")
    torch.manual_seed(0)
    model = TinyCube(int(np.prod(chips.shape[1:-2]))).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def options(items: Path, card: Path, out: Path, **more) -> RunConfig:
    values = dict(out=out, items=str(items), model=str(card), weights="random", formats=("geoparquet",),
                  progress=False)
    return RunConfig(**{**values, **more})


def outputs(out: Path) -> dict[str, tuple[dict, object, np.ndarray]]:
    """Per output item: its STAC item, GeoParquet table and vectors."""
    found = {}
    for path in out.glob("*/*/*.json"):
        if path.parent.name == path.stem:
            table, vectors = read_geoparquet(path.with_suffix(".parquet"))
            found[path.stem] = (json.loads(path.read_text()), table, vectors)
    return found


def windows() -> list[tuple[int, int]]:
    return [(r, c) for r in range(0, SIZE, CHIP) for c in range(0, SIZE, CHIP)]


# --- the tests -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    return challenge_data(tmp_path_factory.mktemp("challenge"))


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cards")
    return {"s2": write_card(root / "s2.json"), "s2s1": write_card(root / "s2s1.json", s1=True),
            "seasons": write_card(root / "seasons.json", time_steps=SEASONS)}


def test_challenge_folder_each_sample_season_equals_a_forward_pass(challenge, cards, tmp_path):
    out = tmp_path / "out"
    summary = run(options(challenge, cards["s2"], out, collections=("s2l2a",)))
    assert len(summary.items_done) == len(HASHES) * SEASONS
    found = outputs(out)
    assert sorted(found) == sorted(f"{h}_{t}" for h in HASHES for t in range(SEASONS))
    for i, sample in enumerate(HASHES):
        path = challenge / "s2l2a" / f"{sample}.zarr.zip"
        cube = cube_array(path)
        epsg, west, north = place(i)
        for t in range(SEASONS):
            item, table, vectors = found[f"{sample}_{t}"]
            rows = table.to_pydict()
            pixels = cube.isel(sample=0, time=t).sel(band=CARD_S2).values.astype("float32")
            chips = np.stack([pixels[:, r:r + CHIP, c:c + CHIP] for r, c in zip(rows["row_off"], rows["col_off"],
                                                                                 strict=True)])
            assert sorted(zip(rows["row_off"], rows["col_off"], strict=True)) == windows()
            np.testing.assert_allclose(vectors, forward(chips, S2_STATS), rtol=1e-5, atol=1e-6)
            # georeferencing: crs + x_/y_ as pixel centres
            for k, (r, c) in enumerate(zip(rows["row_off"], rows["col_off"], strict=True)):
                left, top = west + 10 * c, north - 10 * r
                assert [rows[f"native_{n}"][k] for n in ("xmin", "ymin", "xmax", "ymax")] == \
                    [left, top - 10 * CHIP, left + 10 * CHIP, top]
            props = item["properties"]
            assert props["stacembed:sample"] == sample and props["stacembed:season"] == t
            assert props["datetime"] == f"2020-{3 * t + 1:02d}-1{i}T10:10:31Z"
            assert props["stacembed:file_id"] == str(cube_array(path, "file_id").values[0, t])
            mask = cube_array(path, "cloud_mask").values[0, t]
            assert props["eo:cloud_cover"] == pytest.approx(100 * np.count_nonzero(mask) / mask.size, abs=1e-4)
            assert props["stacembed:center_lat"] == pytest.approx(40.0)
            assert "proj:code" not in props  # the source's grid is not the embeddings'
    # the embeddings COG of one item: the chip grid on the sample's own CRS
    run(options(challenge, cards["s2"], tmp_path / "tif", collections=("s2l2a",), formats=("geotiff",),
                ids=(f"{HASHES[1]}_2",)))
    with rasterio.open(next((tmp_path / "tif").glob(f"*/{HASHES[1]}_2/{HASHES[1]}_2.tif"))) as ds:
        epsg, west, north = place(1)
        assert ds.crs.to_epsg() == epsg
        assert tuple(ds.transform)[:6] == (10.0 * CHIP, 0.0, west, 0.0, -10.0 * CHIP, north)


@pytest.mark.parametrize("fmt", ["geoparquet", "geotiff"])
def test_neuco_csv_one_row_per_sample_the_mean_of_its_seasons(challenge, cards, tmp_path, fmt):
    # GeoTIFF-only embeddings have no sample column: the items' stacembed:sample names them.
    out = tmp_path / "out"
    run(options(challenge, cards["s2"], out, collections=("s2l2a",), formats=(fmt,)))
    csv_path = tmp_path / "submission.csv"
    assert {path: errors for path, errors in validate_tree(out).items() if errors} == {}
    result = export_neuco(out, csv_path)
    assert result.rows == len(HASHES) and result.dimensions == 8
    with open(csv_path) as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id", *map(str, range(8))]
    got = {row[0]: np.array(row[1:], "float64") for row in rows[1:]}
    assert sorted(got) == sorted(HASHES)
    # what the challenge's test_submission checks: an id column, every sample, the dimensions, no NaN
    frame = pd.read_csv(csv_path, header=0).set_index("id")
    assert set(frame.index) == set(HASHES) and len(frame.columns) == 8 and not frame.isna().any().any()
    for sample in HASHES:
        cube = cube_array(challenge / "s2l2a" / f"{sample}.zarr.zip").sel(band=CARD_S2).values.astype("float32")
        chips = np.stack([cube[0, t, :, r:r + CHIP, c:c + CHIP] for t in range(SEASONS) for r, c in windows()])
        np.testing.assert_allclose(got[sample], forward(chips, S2_STATS).astype("float64").mean(axis=0),
                                   rtol=1e-4, atol=1e-5)


def test_ssl4eo_files_of_several_samples_with_two_modalities(tmp_path, cards):
    data = tmp_path / "train"
    write_cube(data / "S2L2A" / "ssl4eos12_train_seasonal_data_000001.zarr.zip", SSL4EO_SAMPLES, S2_NAMES, seed=1,
               sample_chunks=len(SSL4EO_SAMPLES))
    write_cube(data / "S1GRD" / "ssl4eos12_train_seasonal_data_000001.zarr.zip", SSL4EO_SAMPLES, ["vv", "vh"],
               seed=2)
    out = tmp_path / "out"
    run(options(data, cards["s2s1"], out, modalities={"S2L2A": "S2L2A", "S1GRD": "S1GRD"}))
    found = outputs(out)
    assert sorted(found) == sorted(f"{s}_{t}" for s in SSL4EO_SAMPLES for t in range(SEASONS))
    s2 = cube_array(data / "S2L2A" / "ssl4eos12_train_seasonal_data_000001.zarr.zip").sel(band=CARD_S2).values
    s1 = cube_array(data / "S1GRD" / "ssl4eos12_train_seasonal_data_000001.zarr.zip").values
    for i, sample in enumerate(SSL4EO_SAMPLES):
        for t in range(SEASONS):
            item, table, vectors = found[f"{sample}_{t}"]
            # S1 is stored in dB: read as it is (the card's dB conversion is not applied twice)
            pixels = np.concatenate([s2[i, t], s1[i, t]]).astype("float32")
            rows = table.to_pydict()
            chips = np.stack([pixels[:, r:r + CHIP, c:c + CHIP] for r, c in zip(rows["row_off"], rows["col_off"],
                                                                                 strict=True)])
            np.testing.assert_allclose(vectors, forward(chips, S2_STATS + S1_STATS), rtol=1e-5, atol=1e-6)
            params = item["properties"]["emb:runtime_parameters"]
            assert params["modalities"] == ["S2L2A", "S1GRD"] and params["sar_db"] == []
            epsg, west, north = place(i)
            assert item["properties"]["stacembed:sample_id"] == f"{sample}_{t}"
            lon, lat = zip(*item["geometry"]["coordinates"][0], strict=True)
            assert rasterio.warp.transform_bounds(f"EPSG:{epsg}", "EPSG:4326", west, north - 10 * SIZE,
                                                  west + 10 * SIZE, north) == pytest.approx(
                (min(lon), min(lat), max(lon), max(lat)), abs=1e-6)
    result = export_neuco(out, tmp_path / "ssl4eo.csv")
    with open(tmp_path / "ssl4eo.csv") as file:
        assert sorted(row[0] for row in list(csv.reader(file))[1:]) == sorted(SSL4EO_SAMPLES)
    assert result.rows == len(SSL4EO_SAMPLES)


def test_a_chunk_of_many_samples_is_decoded_once_for_all_of_them(tmp_path, cards, monkeypatch):
    path = tmp_path / "S2L2A" / "ssl4eos12_val_seasonal_data_000001.zarr.zip"
    write_cube(path, SSL4EO_SAMPLES, S2_NAMES, seed=3, sample_chunks=len(SSL4EO_SAMPLES))
    reads = []
    getitem = zarr.Array.__getitem__

    def counted(self, key):
        if self.path == "bands":
            reads.append(key)
        return getitem(self, key)

    monkeypatch.setattr(zarr.Array, "__getitem__", counted)
    run(options(path, cards["s2"], tmp_path / "out"))
    # one read of each season's chunk (every sample, every band), not one per sample, band and season
    assert len(reads) == SEASONS, reads
    assert len(outputs(tmp_path / "out")) == len(SSL4EO_SAMPLES) * SEASONS


def test_time_steps_stack_a_samples_four_seasons(challenge, cards, tmp_path):
    out = tmp_path / "out"
    run(options(challenge, cards["seasons"], out, collections=("s2l2a",), time_steps=SEASONS))
    found = outputs(out)
    assert sorted(found) == sorted(f"{h}_0--{h}_3" for h in HASHES)
    for sample in HASHES:
        item, table, vectors = found[f"{sample}_0--{sample}_3"]
        cube = cube_array(challenge / "s2l2a" / f"{sample}.zarr.zip").sel(band=CARD_S2).values.astype("float32")
        series = np.moveaxis(cube[0], 0, 1)  # (band, time, y, x)
        rows = table.to_pydict()
        chips = np.stack([series[..., r:r + CHIP, c:c + CHIP] for r, c in zip(rows["row_off"], rows["col_off"],
                                                                               strict=True)])
        np.testing.assert_allclose(vectors, forward(chips, S2_STATS), rtol=1e-5, atol=1e-6)
        assert item["properties"]["start_datetime"].startswith("2020-01")
        assert item["properties"]["end_datetime"].startswith("2020-10")


def test_shift_s2_channels_adds_1000_and_is_recorded(challenge, cards, tmp_path):
    out = tmp_path / "out"
    run(options(challenge, cards["s2"], out, collections=("s2l2a",), ids=(f"{HASHES[0]}_1",), shift_s2_channels=True))
    item, table, vectors = outputs(out)[f"{HASHES[0]}_1"]
    cube = cube_array(challenge / "s2l2a" / f"{HASHES[0]}.zarr.zip").sel(band=CARD_S2).values.astype("float32")
    rows = table.to_pydict()
    chips = np.stack([cube[0, 1, :, r:r + CHIP, c:c + CHIP] + 1000 for r, c in zip(rows["row_off"], rows["col_off"],
                                                                                     strict=True)])
    np.testing.assert_allclose(vectors, forward(chips, S2_STATS), rtol=1e-5, atol=1e-6)
    assert item["properties"]["stacembed:s2_offset"] == 1000
    assert item["properties"]["emb:runtime_parameters"]["shift_s2_channels"] == 1000


def test_one_file_finds_its_other_modality_beside_it(challenge, cards, tmp_path):
    one = challenge / "s2l2a" / f"{HASHES[0]}.zarr.zip"
    found = plan(options(one, cards["s2s1"], tmp_path / "out", modalities={"S2L2A": "s2l2a", "S1GRD": "s1"}))
    assert {row["id"]: row["modalities"] for row in found["items"]} == {
        f"{HASHES[0]}_{t}": {"S2L2A": [f"{HASHES[0]}_{t}"], "S1GRD": [f"{HASHES[0]}_{t}"]} for t in range(SEASONS)}


@pytest.mark.parametrize("case", ["missing modality", "mismatched samples", "no bands variable"])
def test_bad_cubes_are_one_line(case, cards, tmp_path, cli):
    args = ["--model", str(cards["s2s1"]), "--weights", "random", "--format", "geoparquet"]
    if case == "mismatched samples":
        data = challenge_data(tmp_path, s1_hashes=["ffff0000", HASHES[1]])
        expected = f"sample '{HASHES[0]}' (season 0) of s2l2a has no counterpart in input S1GRD"
    elif case == "missing modality":
        data = challenge_data(tmp_path)
        shutil.rmtree(data / "s1")
        expected = "no modality folder 's1' of sample cubes"
    else:
        data = tmp_path / "DATA"
        write_cube(data / "s2l2a" / f"{HASHES[0]}.zarr.zip", ["0"], S2_NAMES, seed=0, pixels="data")
        write_cube(data / "s1" / f"{HASHES[0]}.zarr.zip", ["0"], ["vv", "vh"], seed=1)
        expected = "has no variable 'bands'"
    result = cli("run", "--items", str(data), "--modality", "S2L2A=s2l2a", "--modality", "S1GRD=s1", *args,
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: ") and expected in lines[0], result.output


def test_cubes_without_georeferencing_run_on_their_pixel_grid(tmp_path, cards):
    data = challenge_data(tmp_path, georeferenced=False)
    out = tmp_path / "out"
    run(options(data, cards["s2"], out, collections=("s2l2a",), ids=(f"{HASHES[0]}_0",)))
    item, table, vectors = outputs(out)[f"{HASHES[0]}_0"]
    assert item["geometry"] is None
    cube = cube_array(data / "s2l2a" / f"{HASHES[0]}.zarr.zip").sel(band=CARD_S2).values.astype("float32")
    rows = table.to_pydict()
    chips = np.stack([cube[0, 0, :, r:r + CHIP, c:c + CHIP] for r, c in zip(rows["row_off"], rows["col_off"],
                                                                              strict=True)])
    np.testing.assert_allclose(vectors, forward(chips, S2_STATS), rtol=1e-5, atol=1e-6)
