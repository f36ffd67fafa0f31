"""Segmentation on dense embeddings: `stacembed train --task segmentation` and its class maps.

A synthetic scene whose classes are known by construction: items of 512 x 512 px (30 m,
EPSG:32725) made of a bright, smooth half and a dark, chequered half, the boundary on a patch
boundary (the demo model's patches are 32 px), the bright half on another side in each item.
The labels are the same halves, written in another CRS (EPSG:32724, 15 m: reprojected when
painted), with a strip of no label at the bottom of each item. One more item, 512 x 640 px and
away from the labels, has no data in its top 64 rows (its top patches have no embedding) and
is two tiles wide (16 + 4 patches).

Every expectation is computed here from the files written (validation.parquet, metrics.json,
the maps), the source COGs and label rasters (rasterio, pyproj), the head applied directly
(``read_head``) and scikit-learn, not with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from conftest import EPSG, RES, SYNTHETIC_BANDS, make_catalog, make_item, write_cog
from pyproj import Transformer
from rasterio.warp import calculate_default_transform, reproject
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score

from stacembed import RunConfig, run
from stacembed.embeddings import open_embeddings
from stacembed.learn.card import read_head
from stacembed.learn.labels import MISSING, open_labels
from stacembed.learn.predict import predict
from stacembed.learn.segment import collect_tiles
from stacembed.learn.train import TrainOptions, train
from stacembed.validate import validate_paths

SIZE = 512  # px: one tile of 16 x 16 patches of 32 px
PATCH = 32  # the demo model's patch, in source pixels (test_resnet: stride 32)
BRIGHT, DARK = 7, 3  # class values unlike the indices 0, 1 a head uses
NODATA = 255
SPACING = 540 * RES  # between the items' origins (a gap of 28 px)
UNLABELLED_ROWS = 40  # at the bottom of each labelled item: no label (not on a patch boundary)
# item id -> where its bright half is (the boundary at SIZE / 2: a patch boundary)
LAYOUTS = {"tile-0": "left", "tile-1": "right", "tile-2": "top", "tile-3": "bottom", "tile-4": "right",
           "tile-5": "top"}
GAPPY, GAPPY_SHAPE, GAPPY_ROWS = "gappy", (512, 640), 64  # no data in its top 64 rows: one chip row
LABEL_CRS = "EPSG:32724"
LABEL_RES = 15.0


def origin_of(item_id: str) -> tuple[float, float]:
    if item_id == GAPPY:
        return 500000.0, 9100000.0 - 2.5 * SPACING
    index = int(item_id.split("-")[1])
    return 500000.0 + (index % 3) * SPACING, 9100000.0 - (index // 3) * SPACING


def bright_mask(layout: str, shape: tuple[int, int]) -> np.ndarray:
    """True on the bright half; the boundary halfway (a multiple of the patch size)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    half_rows, half_cols = shape[0] // 2, shape[1] // 2
    return {"left": cols < half_cols, "right": cols >= half_cols, "top": rows < half_rows,
            "bottom": rows >= half_rows}[layout]


def truth_of(item_id: str) -> np.ndarray:
    """The class values of an item's pixels by construction."""
    shape = GAPPY_SHAPE if item_id == GAPPY else (SIZE, SIZE)
    return np.where(bright_mask("left" if item_id == GAPPY else LAYOUTS[item_id], shape), BRIGHT, DARK)


def band(bright: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright and smooth (~150) against dark and chequered (~30-45): digital numbers of the order
    the demo card's z-scores expect (mean ~80, sd ~15-40)."""
    rows, cols = np.mgrid[0:bright.shape[0], 0:bright.shape[1]]
    light = 150 + 10 * np.sin(cols / 5.0) + rng.normal(0, 5, bright.shape)
    dark = 30 + 15 * ((rows // 8 + cols // 8) % 2) + rng.normal(0, 5, bright.shape)
    return np.where(bright, light, dark).clip(1, 255).astype("uint16")


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs: str) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=NODATA) as ds:
        ds.write(data.astype("uint8"), 1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("seg-scene")
    items = []
    for index, item_id in enumerate([*LAYOUTS, GAPPY]):
        shape = GAPPY_SHAPE if item_id == GAPPY else (SIZE, SIZE)
        origin = origin_of(item_id)
        item = make_item(root, item_id, dialect="1.1", origin=origin, shape=shape, seed=index + 1,
                         nodata=0 if item_id == GAPPY else None)
        transform = Affine(RES, 0, origin[0], 0, -RES, origin[1])
        rng = np.random.default_rng(index)
        bright = truth_of(item_id) == BRIGHT
        for key, _ in SYNTHETIC_BANDS:  # the scene replaces make_item's pixels, on the same grid
            data = band(bright, rng)
            if item_id == GAPPY:
                data[:GAPPY_ROWS] = 0
            write_cog(root / item_id / f"{key}.tif", data, transform)
        items.append(item)
    catalog = make_catalog(root, items)
    # labels: the halves of the six items on their own grid (EPSG:32725, 30 m), no label between the
    # items and in a strip at the bottom of each; written reprojected to EPSG:32724 at 15 m
    west, north = origin_of("tile-0")
    width, height = int(2 * SPACING / RES) + SIZE, int(SPACING / RES) + SIZE
    mosaic = np.full((height, width), NODATA, "uint8")
    for item_id in LAYOUTS:
        x, y = origin_of(item_id)
        row, col = round((north - y) / RES), round((x - west) / RES)
        values = truth_of(item_id).astype("uint8")
        values[-UNLABELLED_ROWS:] = NODATA
        mosaic[row:row + SIZE, col:col + SIZE] = values
    source_transform = Affine(RES, 0, west, 0, -RES, north)
    bounds = (west, north - height * RES, west + width * RES, north)
    transform, out_width, out_height = calculate_default_transform(f"EPSG:{EPSG}", LABEL_CRS, width, height,
                                                                   *bounds, resolution=LABEL_RES)
    labels = np.full((out_height, out_width), NODATA, "uint8")
    reproject(mosaic, labels, src_transform=source_transform, src_crs=f"EPSG:{EPSG}", src_nodata=NODATA,
              dst_transform=transform, dst_crs=LABEL_CRS, dst_nodata=NODATA)
    write_raster(root / "classes.tif", labels, transform, LABEL_CRS)
    # the gappy item's halves on its own grid, labels everywhere (under its missing patches too)
    x, y = origin_of(GAPPY)
    write_raster(root / "gappy-classes.tif", truth_of(GAPPY), Affine(RES, 0, x, 0, -RES, y), f"EPSG:{EPSG}")
    # labels far from every item
    write_raster(root / "elsewhere.tif", np.tile(np.array([[BRIGHT, DARK]], "uint8"), (64, 32)),
                 Affine(RES, 0, 700000.0, 0, -RES, 9000000.0), f"EPSG:{EPSG}")
    return {"catalog": catalog, "root": root, "classes": root / "classes.tif",
            "gappy-classes": root / "gappy-classes.tif", "elsewhere": root / "elsewhere.tif"}


@pytest.fixture(scope="module")
def runs(scene, tmp_path_factory) -> dict[str, Path]:
    """Dense embeddings of the scene (the demo model, whose weights are a seeded random
    initialisation) and chip embeddings of the same (64 px chips)."""
    base = tmp_path_factory.mktemp("seg-runs")
    run(RunConfig(out=base / "dense", catalog=str(scene["catalog"]), pooling="none", progress=False))
    run(RunConfig(out=base / "chips", catalog=str(scene["catalog"]), formats=("geoparquet",), progress=False))
    return {"dense": base / "dense", "chips": base / "chips"}


@pytest.fixture(scope="module")
def segmenter(runs, scene, tmp_path_factory) -> Path:
    """The decoder trained on the scene (2 of the 6 labelled tiles held out; few epochs, one
    tile a batch, on the CPU)."""
    out = tmp_path_factory.mktemp("seg-heads") / "decoder"
    train(runs["dense"], scene["classes"], out=out, progress=False,
          options=TrainOptions(task="segmentation", epochs=4, batch_size=1, block_size=1,
                               validation_fraction=0.34, device="cpu"))
    return out


@pytest.fixture(scope="module")
def predicted(runs, segmenter, tmp_path_factory) -> Path:
    """The prediction collection's directory."""
    result = predict(runs["dense"], segmenter, out=tmp_path_factory.mktemp("seg-pred") / "out", probabilities=True,
                     device="cpu", progress=False)
    return result.collection.parent


@pytest.fixture(scope="module")
def coarse(runs, scene, tmp_path_factory, cli_module) -> dict[str, Path]:
    """`stacembed train --label-scale 16` (the CLI), and `stacembed predict` of its head."""
    base = tmp_path_factory.mktemp("seg-coarse")
    result = cli_module("train", "--embeddings", runs["dense"], "--labels", scene["classes"], "--task",
                        "segmentation", "--out", base / "head", "--epochs", "2", "--block-size", "1",
                        "--label-scale", "16", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    result = cli_module("predict", "--embeddings", runs["dense"], "--model", base / "head", "--out", base / "pred",
                        "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    return {"head": base / "head", "pred": next((base / "pred").glob("predictions-*"))}


@pytest.fixture(scope="module")
def cli_module():
    """conftest's ``cli``, for module-scoped fixtures."""
    from click.testing import CliRunner

    from stacembed.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def metrics_of(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def held_out(directory: Path) -> list[dict]:
    """validation.parquet's rows, the maps reshaped (side x side)."""
    rows = pq.read_table(directory / "validation.parquet").to_pylist()
    for row in rows:
        for name in ("label_index", "predicted_index"):
            row[name] = np.array(row[name], "int64").reshape(row["side"], row["side"])
    return rows


def class_values(directory: Path) -> np.ndarray:
    return np.array([c["value"] for c in metrics_of(directory)["classes"]])


def source_grid(scene: dict, item_id: str) -> tuple[Affine, tuple[int, int]]:
    """The source item's pixel grid, from its first band's COG."""
    with rasterio.open(scene["root"] / "synthetic" / item_id / "B1.tif") as ds:
        return ds.transform, ds.shape


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "shape": ds.shape, "dtype": ds.dtypes[0],
                           "nodata": ds.nodata, "count": ds.count}


def map_files(collection: Path, item_id: str) -> dict[str, Path]:
    folder = collection / item_id
    return {"json": folder / f"{item_id}.json", "map": folder / f"{item_id}.tif",
            "probabilities": folder / f"{item_id}-probabilities.tif"}


def labels_at(path: Path, transform: Affine, rows: np.ndarray, cols: np.ndarray,
              shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The label raster's values (nearest: the pixel holding the point) at the centres of the
    source pixels (rows, cols) of ``transform`` (EPSG:32725); ``shift`` moves the point by that
    many label pixels (x, y) in the label raster; -1 where no label."""
    with rasterio.open(path) as ds:
        data, inverse, crs = ds.read(1), ~ds.transform, ds.crs.to_string()
    x, y = transform * (cols + 0.5, rows + 0.5)
    lx, ly = Transformer.from_crs(f"EPSG:{EPSG}", crs, always_xy=True).transform(x, y)
    col, row = inverse * (lx, ly)
    col, row = np.floor(col + shift[0]).astype(int), np.floor(row + shift[1]).astype(int)
    inside = (row >= 0) & (row < data.shape[0]) & (col >= 0) & (col < data.shape[1])
    found = np.full(row.shape, -1, "int64")
    found[inside] = data[row[inside], col[inside]]
    return np.where(found == NODATA, -1, found)


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.stderr
    return lines[0]


# 1. Classes known by construction are learnt.

def test_dense_embeddings_are_a_patch_grid_on_the_source_pixels(runs, scene):
    for item in open_embeddings(runs["dense"]):
        values, transform, crs = item.array()
        source, shape = source_grid(scene, item.id)
        assert item.kind == "pixel" and crs.to_epsg() == EPSG
        assert values.shape[1:] == (shape[0] // PATCH, shape[1] // PATCH)
        assert transform == source * Affine.scale(PATCH)
        missing = np.isnan(values).all(axis=0)
        if item.id == GAPPY:  # the top chip row (64 px: two patch rows) had no data
            assert missing[:GAPPY_ROWS // PATCH].all() and not missing[GAPPY_ROWS // PATCH:].any()
        else:
            assert not missing.any()


def test_held_out_pixels_are_segmented(segmenter):
    """(With seed 0 the held-out tiles are tile-1 and tile-4, bright on the right, a side that no
    training tile has: the head must have learnt the brightness, not the place.)"""
    metrics = metrics_of(segmenter)
    assert metrics["task"] == "segmentation" and metrics["head"] == "decoder"
    assert metrics["tiles"] == len(LAYOUTS)  # the gappy item has no label
    assert [c["value"] for c in metrics["classes"]] == [DARK, BRIGHT]
    scores = metrics["embeddings"]
    assert scores["accuracy"] > 0.9 and scores["miou"] > 0.8, scores
    assert all(c["recall"] > 0.85 for c in scores["classes"]), scores["classes"]
    assert metrics["baseline"]["computed"] is False


def test_predicted_maps_of_held_out_items_match_the_construction(segmenter, predicted):
    tiles = {row["item"] for row in held_out(segmenter)}
    assert len(tiles) == 2, tiles
    for item_id in tiles:
        classes, _ = read(map_files(predicted, item_id)["map"])
        agreement = (classes[0] == truth_of(item_id)).mean()
        assert agreement > 0.9, (item_id, agreement)


# 2. Metrics are those of validation.parquet.

def test_metrics_equal_a_recomputation_from_validation_parquet(segmenter):
    metrics, rows = metrics_of(segmenter), held_out(segmenter)
    assert len(rows) == sum(metrics["validation"]["held_out"])
    assert {row["side"] for row in rows} == {16 * PATCH}
    assert {(row["patch_row"], row["patch_col"], row["fold"]) for row in rows} == {(0, 0, 0)}
    truth = np.concatenate([row["label_index"].ravel() for row in rows])
    guess = np.concatenate([row["predicted_index"].ravel() for row in rows])
    assert set(np.unique(truth)) == {-1, 0, 1} and set(np.unique(guess)) <= {0, 1}
    labelled = truth != -1
    truth, guess = truth[labelled], guess[labelled]
    scores = metrics["embeddings"]
    assert scores["n"] == labelled.sum()
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert scores["confusion_matrix"] == confusion_matrix(truth, guess, labels=[0, 1]).tolist()
    assert scores["miou"] == pytest.approx(jaccard_score(truth, guess, average="macro"))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, guess, average="macro"))
    iou = jaccard_score(truth, guess, average=None)
    assert [c["iou"] for c in scores["classes"]] == pytest.approx(list(iou))


# 3. The labels under the patches are the label raster's, sampled at the source pixel centres.

def test_labels_under_the_patches_are_the_label_raster_at_the_source_pixels(segmenter, scene):
    values = class_values(segmenter)
    for row in held_out(segmenter):
        transform, _ = source_grid(scene, row["item"])
        side = row["side"]
        rows, cols = np.mgrid[0:side, 0:side] + np.array([row["patch_row"], row["patch_col"]])[:, None, None] * PATCH
        got = np.where(row["label_index"] == -1, -1, values[row["label_index"].clip(0)])
        # GDAL's warper places points within 1/8 of a label pixel: where moving the point by a
        # quarter of a pixel changes the label, either label will do; elsewhere they are equal
        around = np.stack([labels_at(scene["classes"], transform, rows, cols, shift)
                           for shift in ((0, 0), (0.25, 0), (-0.25, 0), (0, 0.25), (0, -0.25))])
        sure = (around == around[0]).all(axis=0)
        assert sure.mean() > 0.98, sure.mean()
        np.testing.assert_array_equal(got[sure], around[0][sure])
        assert (got[~sure][None] == around[:, ~sure]).any(axis=0).all()
        # and the labels are the construction's halves, with no label in the bottom strip
        expected = truth_of(row["item"])
        expected[-UNLABELLED_ROWS:] = -1
        assert (got == expected).mean() > 0.99


def test_labels_under_patches_without_embeddings_are_not_scored(runs, scene, tmp_path):
    """The gappy item's top two patch rows have no embedding: `predict` writes no class there,
    so training should neither fit nor score the labels under them (they are zero vectors)."""
    items = [item for item in open_embeddings(runs["dense"]) if item.id == GAPPY]
    labels = open_labels(scene["gappy-classes"], kind="classification")
    tiles = collect_tiles(items, labels, tmp_path, min_fraction=0.0)
    assert tiles.places == [(GAPPY, 0, 0), (GAPPY, 0, 16)]
    # the labels elsewhere are painted
    assert (tiles.labels[0, GAPPY_ROWS:] != MISSING).all()
    assert (tiles.labels[:, :GAPPY_ROWS] == MISSING).all(), "labels under patches with no embedding are kept"


# 4. predict: class maps at source pixel resolution, equal to the head applied here.

def test_class_maps_sit_on_the_source_pixel_grid(runs, scene, predicted):
    for item in open_embeddings(runs["dense"]):
        files = map_files(predicted, item.id)
        classes, profile = read(files["map"])
        source, shape = source_grid(scene, item.id)
        assert (profile["transform"], profile["shape"]) == (source, shape)
        assert profile["crs"].to_epsg() == EPSG
        assert (profile["dtype"], profile["nodata"], profile["count"]) == ("uint8", NODATA, 1)
        patches = np.isnan(item.array()[0]).all(axis=0)
        assert classes.shape[1:] == (patches.shape[0] * PATCH, patches.shape[1] * PATCH)
        under_none = patches.repeat(PATCH, 0).repeat(PATCH, 1)
        assert (classes[0][under_none] == NODATA).all()
        assert set(np.unique(classes[0][~under_none])) <= {DARK, BRIGHT}
        if item.id == GAPPY:
            assert under_none[:GAPPY_ROWS].all() and not under_none[GAPPY_ROWS:].any()
        stac = json.loads(files["json"].read_text())
        asset = stac["assets"]["prediction"]
        assert asset["proj:transform"] == list(source)[:6] and asset["proj:shape"] == list(shape)
        counted = {c["value"]: c.get("count") for c in asset["classification:classes"]}
        assert counted == {DARK: int((classes == DARK).sum()), BRIGHT: int((classes == BRIGHT).sum()),
                           NODATA: None}
    reports = list(validate_paths([predicted.parent / "catalog.json"]))
    assert all(report.line(strict=True) is None for report in reports), [r.line(strict=True) for r in reports]


def test_probabilities_sum_to_one_and_their_argmax_is_the_class_map(runs, segmenter, predicted):
    values = class_values(segmenter)
    for item in open_embeddings(runs["dense"]):
        files = map_files(predicted, item.id)
        classes, _ = read(files["map"])
        chances, profile = read(files["probabilities"])
        assert (profile["count"], profile["dtype"]) == (2, "float32") and np.isnan(profile["nodata"])
        painted = classes[0] != NODATA
        np.testing.assert_allclose(chances[:, painted].sum(axis=0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(values[chances[:, painted].argmax(axis=0)], classes[0][painted])
        assert np.isnan(chances[:, ~painted]).all()


def test_class_maps_are_the_head_applied_to_each_tile(runs, segmenter, predicted):
    head, card = read_head(segmenter)
    values = np.array([c["value"] for c in card["properties"]["mlm:output"][0]["classification:classes"]])
    assert list(values) == [DARK, BRIGHT] and head.scale == PATCH
    gappy = next(item for item in open_embeddings(runs["dense"]) if item.id == GAPPY)
    embeddings = gappy.array()[0]
    classes, _ = read(map_files(predicted, GAPPY)["map"])
    chances, _ = read(map_files(predicted, GAPPY)["probabilities"])
    for col0, width in ((0, 16), (16, 4)):  # the item's two tiles: 16 and 4 patches wide
        tile = embeddings[:, :, col0:col0 + width]
        expected = head.predict_proba(np.nan_to_num(tile, nan=0.0)[None])[0]
        assert expected.shape == (2, tile.shape[1] * PATCH, width * PATCH)
        cols = slice(col0 * PATCH, (col0 + width) * PATCH)
        below = slice(GAPPY_ROWS, None)  # under patches with embeddings
        np.testing.assert_allclose(chances[:, below, cols], expected[:, below], atol=1e-5)
        np.testing.assert_array_equal(classes[0, below, cols], values[expected[:, below].argmax(axis=0)])


def test_run_with_a_segmentation_head_writes_the_same_maps(scene, segmenter, predicted, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("run", "--catalog", scene["catalog"], "--pooling", "none", "--out", out, "--head", segmenter,
                 "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    collection = next(out.glob("predictions-*"))
    for item_id in [*LAYOUTS, GAPPY]:
        ours, profile = read(map_files(collection, item_id)["map"])
        theirs, expected = read(map_files(predicted, item_id)["map"])
        assert (profile["transform"], profile["shape"]) == (expected["transform"], expected["shape"])
        np.testing.assert_array_equal(ours, theirs)


# 5. Refusals.

def test_segmentation_refuses_chip_embeddings(runs, scene, tmp_path, cli):
    message = one_line_error(cli("train", "--embeddings", runs["chips"], "--labels", scene["classes"], "--task",
                                 "segmentation", "--out", tmp_path / "head", "-q"))
    assert "dense embeddings" in message and "--pooling none" in message, message
    assert not (tmp_path / "head").exists()


def test_segmentation_refuses_heads_that_do_not_segment(runs, scene, tmp_path, cli):
    message = one_line_error(cli("train", "--embeddings", runs["dense"], "--labels", scene["classes"], "--task",
                                 "segmentation", "--head", "linear", "--out", tmp_path / "head", "-q"))
    assert "linear" in message and "segmentation" in message, message
    message = one_line_error(cli("train", "--embeddings", runs["chips"], "--labels", scene["classes"],
                                 "--head", "decoder", "--out", tmp_path / "head", "-q"))
    assert "decoder" in message and "classification" in message, message


def test_segmentation_refuses_labels_that_cover_no_tile(runs, scene, tmp_path, cli):
    message = one_line_error(cli("train", "--embeddings", runs["dense"], "--labels", scene["elsewhere"], "--task",
                                 "segmentation", "--out", tmp_path / "head", "-q"))
    assert "cover no tile" in message, message
    assert not (tmp_path / "head").exists()


def test_predict_refuses_heads_of_the_other_layout(runs, scene, segmenter, tmp_path, cli):
    chip_head = tmp_path / "chip-head"
    train(runs["chips"], scene["classes"], out=chip_head, progress=False,
          options=TrainOptions(epochs=1, block_size=2, baseline=False, device="cpu"))
    message = one_line_error(cli("predict", "--embeddings", runs["dense"], "--model", chip_head,
                                 "--out", tmp_path / "a", "-q"))
    assert "trained on" in message and "none pooling" in message, message
    message = one_line_error(cli("predict", "--embeddings", runs["chips"], "--model", segmenter,
                                 "--out", tmp_path / "b", "-q"))
    assert "trained on" in message and "none pooling" in message, message
    for out in (tmp_path / "a", tmp_path / "b"):
        assert not out.exists() or not any(out.rglob("*.tif"))


def test_a_patch_classifier_predicts_the_dense_embeddings_it_was_trained_on(runs, scene, tmp_path):
    """`train` takes dense embeddings for a chip task (a patch is a chip); the head it writes
    must then be usable on those very embeddings."""
    head = tmp_path / "patch-head"
    train(runs["dense"], scene["classes"], out=head, progress=False,
          options=TrainOptions(epochs=1, block_size=2, baseline=False, device="cpu"))
    result = predict(runs["dense"], head, out=tmp_path / "pred", device="cpu", progress=False)
    assert result.chips == len(LAYOUTS) * 16 * 16 + 16 * 20 - 2 * 20


# 6. --label-scale: another resolution of the labels and of the maps.

def test_label_scale_halves_the_resolution(runs, scene, coarse):
    metrics = metrics_of(coarse["head"])
    head, _ = read_head(coarse["head"])
    assert head.scale == PATCH // 2
    rows = held_out(coarse["head"])
    assert {row["side"] for row in rows} == {16 * PATCH // 2}
    values = class_values(coarse["head"])
    for row in rows:  # labels at the centres of 60 m cells
        transform, _ = source_grid(scene, row["item"])
        coarser = transform * Affine.scale(2)
        cells = np.mgrid[0:row["side"], 0:row["side"]]
        expected = labels_at(scene["classes"], coarser, cells[0], cells[1])
        got = np.where(row["label_index"] == -1, -1, values[row["label_index"].clip(0)])
        assert (got == expected).mean() > 0.99
    assert metrics["embeddings"]["n"] == sum(int((row["label_index"] != -1).sum()) for row in rows)
    for item in open_embeddings(runs["dense"]):
        classes, profile = read(map_files(coarse["pred"], item.id)["map"])
        source, shape = source_grid(scene, item.id)
        assert profile["transform"] == source * Affine.scale(2)
        assert profile["shape"] == (shape[0] // 2, shape[1] // 2)


def test_train_prints_its_scores_for_segmentation(runs, scene, tmp_path, cli):
    result = cli("train", "--embeddings", runs["dense"], "--labels", scene["classes"], "--task", "segmentation",
                 "--out", tmp_path / "head", "--epochs", "1", "--block-size", "1", "--label-scale", "4",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "tiles" in result.stdout and "accuracy" in result.stdout, result.stdout
