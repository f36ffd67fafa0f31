"""`stacembed train`: a light head on the sample's chip embeddings against independent labels.

The labels are a real DEM co-located with the sample (tests/data/olinda_dem_utm25s.tif, ~90 m,
a custom UTM 25S WKT, not the sample's EPSG:31985): its heights as regression targets, and
classes made from them by thresholding; and polygons drawn in EPSG:4326 over the sample. Every
expectation is computed here from the files written (validation.parquet, the embeddings
GeoParquet, the source COGs, the label files) with scikit-learn, pyproj, rasterio and shapely,
not with the code under test.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from conftest import REPO, SAMPLE
from pyproj import Transformer
from rasterio.windows import Window
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)

from stacembed import RunConfig, run
from stacembed.analysis.derived import model_of
from stacembed.embeddings import open_embeddings
from stacembed.learn.baseline import band_means_catalog
from stacembed.learn.train import TrainOptions, train
from stacembed.validate import check

DEM = REPO / "tests" / "data" / "olinda_dem_utm25s.tif"
SOURCES = REPO / "catalogs" / "sample" / "landsat-etm-sample"
SOURCE_BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")  # the demo card's band order
CHIP = 16
CLASS_VALUES = np.array([1, 4, 9], "uint8")  # class values unlike the indices 0, 1, 2 a head uses
NODATA = 255
BLOCK = 3  # --block-size in chips
SAMPLE_BBOX = (-34.916589, -8.040927, -34.8259656, -7.9498221)  # lon/lat of the four sample items
MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    """The sample catalog embedded with the demo model in 16 px chips: 4 items of 11 x 11 chips."""
    out = tmp_path_factory.mktemp("train-embeddings") / "emb"
    run(RunConfig(out=out, catalog=str(SAMPLE), chip_size=CHIP, progress=False))
    return out


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> dict:
    """The DEM's heights (values), its classes (< 5 m, 5-30 m, >= 30 m as 1, 4, 9; a 20 x 20 px
    corner of nodata, ~1.8 km, so that some chips have no label) and three polygons in EPSG:4326
    with text labels (and gaps between them)."""
    root = tmp_path_factory.mktemp("train-labels")
    with rasterio.open(DEM) as src:
        profile, heights = src.profile, src.read(1)
    classes = CLASS_VALUES[np.digitize(heights, [5, 30])]
    classes[:20, :20] = NODATA
    profile.update(dtype="uint8", nodata=NODATA)
    with rasterio.open(root / "classes.tif", "w", **profile) as dst:
        dst.write(classes, 1)
    west, south, east, north = SAMPLE_BBOX
    polygons = gpd.GeoDataFrame(
        {"landcover": ["forest", "urban area", "water"]},
        geometry=[shapely.box(west - 0.01, south - 0.01, -34.87, north + 0.01),
                  shapely.Polygon([(-34.865, north + 0.01), (east + 0.01, north + 0.01), (east + 0.01, -8.0)]),
                  shapely.box(-34.865, south - 0.01, east + 0.01, -8.005)],
        crs="EPSG:4326")
    polygons.to_file(root / "polygons.geojson")
    return {"classes": root / "classes.tif", "heights": DEM, "polygons": root / "polygons.geojson",
            "polygon_frame": polygons}


@pytest.fixture(scope="module")
def chips(embeddings) -> dict[str, dict]:
    """Every chip of the embeddings GeoParquet by id: its item, place on the item's chip grid,
    pixel window and native footprint, and the CRS of its item (from the embeddings COG)."""
    found = {}
    for item in open_embeddings(embeddings):
        with rasterio.open(item.hrefs["geotiff"]) as cog:
            crs = cog.crs.to_wkt()
        columns = ["id", "source_item", "chip_row", "chip_col", "col_off", "row_off", "width", "height",
                   "native_xmin", "native_ymin", "native_xmax", "native_ymax"]
        for row in item.table(columns).to_pylist():
            found[row["id"]] = {**row, "crs": crs}
    return found


@pytest.fixture(scope="module")
def trained(embeddings, labels, tmp_path_factory) -> dict[str, Path]:
    """Model directories of `train` runs, by name (few epochs: the scores do not matter here; on
    the CPU, where the heads promise bit-identical results for a seed)."""
    root = tmp_path_factory.mktemp("train-heads")
    fast = {"epochs": 5, "block_size": BLOCK, "device": "cpu"}
    runs = {
        "blocks": ("classes", TrainOptions(head="mlp", **fast)),
        "again": ("classes", TrainOptions(head="mlp", **fast)),
        "seed1": ("classes", TrainOptions(head="mlp", seed=1, baseline=False, **fast)),
        "folds": ("classes", TrainOptions(head="linear", folds=3, baseline=False, **fast)),
        "items": ("classes", TrainOptions(head="linear", split="items", baseline=False, **fast)),
        "item-folds": ("classes", TrainOptions(head="linear", split="items", folds=2, baseline=False, **fast)),
        "polygons": ("polygons", TrainOptions(head="linear", label_column="landcover", baseline=False, **fast)),
        "regression": ("heights", TrainOptions(task="regression", head="mlp", **fast)),
    }
    for name, (source, options) in runs.items():
        train(embeddings, labels[source], out=root / name, options=options, progress=False)
    return {name: root / name for name in runs}


def metrics_of(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def held_out(directory: Path) -> dict[str, dict]:
    return {row["id"]: row for row in pq.read_table(directory / "validation.parquet").to_pylist()}


@functools.cache
def transformer(source: str, target: str) -> Transformer:
    return Transformer.from_crs(source, target, always_xy=True)


@functools.cache
def raster(path: Path) -> tuple[np.ndarray, float | None, rasterio.Affine, str]:
    with rasterio.open(path) as src:
        return src.read(1), src.nodata, src.transform, src.crs.to_wkt()


def pixel_centres(chip: dict, crs: str) -> tuple[np.ndarray, np.ndarray]:
    """The centres of the chip's native pixels, in ``crs``."""
    size = (chip["native_xmax"] - chip["native_xmin"]) / chip["width"]
    xx, yy = np.meshgrid(chip["native_xmin"] + (np.arange(chip["width"]) + 0.5) * size,
                         chip["native_ymax"] - (np.arange(chip["height"]) + 0.5) * size)
    x, y = transformer(chip["crs"], crs).transform(xx.ravel(), yy.ravel())
    return np.asarray(x), np.asarray(y)


def raster_at_centres(chip: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raster's value at each of the chip's pixel centres (its nearest pixel) and whether
    there is one (inside the raster, not nodata)."""
    data, nodata, transform, crs = raster(path)
    x, y = pixel_centres(chip, crs)
    rows, cols = (np.asarray(v) for v in rasterio.transform.rowcol(transform, x, y))
    inside = (rows >= 0) & (rows < data.shape[0]) & (cols >= 0) & (cols < data.shape[1])
    values = np.zeros(rows.shape, data.dtype)
    values[inside] = data[rows[inside], cols[inside]]
    valid = inside & (values != nodata if nodata is not None else True)
    return values, valid


def majority(values: np.ndarray, valid: np.ndarray) -> tuple[int | None, float]:
    """The most frequent value among the valid ones (ties: the smallest) and the share valid."""
    if not valid.any():
        return None, 0.0
    return int(np.bincount(values[valid].astype("int64")).argmax()), float(valid.mean())


def block_of(chip: dict, size: int) -> tuple[str, int, int]:
    """The chip's spatial block: its CRS and its centre // (size chips x a chip's extent)."""
    extent = chip["native_xmax"] - chip["native_xmin"]
    x = (chip["native_xmin"] + chip["native_xmax"]) / 2
    y = (chip["native_ymin"] + chip["native_ymax"]) / 2
    return chip["crs"], int(np.floor(x / (size * extent))), int(np.floor(y / (size * extent)))


def multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


# 1. The scores are those of the held-out predictions written.

def assert_classification_scores(scores: dict, rows: list[dict], n_classes: int) -> None:
    truth = np.array([r["label_index"] for r in rows])
    predicted = np.array([r["predicted_index"] for r in rows])
    every = list(range(n_classes))
    assert scores["n"] == len(rows)
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth, predicted, labels=every, average="macro",
                                                        zero_division=np.nan))
    # a class neither true nor predicted has no score (None), and no part in the means
    seen = np.isin(every, np.concatenate([truth, predicted]))
    ious = jaccard_score(truth, predicted, labels=every, average=None, zero_division=0)
    assert [c["iou"] for c in scores["classes"]] == pytest.approx(
        [float(v) if s else None for v, s in zip(ious, seen, strict=True)])
    assert scores["miou"] == pytest.approx(ious[seen].mean())
    f1s = f1_score(truth, predicted, labels=every, average=None, zero_division=0)
    assert [c["f1"] for c in scores["classes"]] == pytest.approx(
        [float(v) if s else None for v, s in zip(f1s, seen, strict=True)])
    assert [c["support"] for c in scores["classes"]] == np.bincount(truth, minlength=n_classes).tolist()
    assert scores["confusion_matrix"] == confusion_matrix(truth, predicted, labels=every).tolist()


def test_classification_metrics_equal_a_recomputation_from_validation_parquet(trained):
    for name in ("blocks", "folds", "polygons"):
        metrics = metrics_of(trained[name])
        rows = list(held_out(trained[name]).values())
        n_classes = len(metrics["classes"])
        assert_classification_scores(metrics["embeddings"], rows, n_classes)
        # the label and prediction values are the class values of their indices
        values = {c["index"]: c["value"] for c in metrics["classes"]}
        assert all(r["label"] == values[r["label_index"]] and r["predicted"] == values[r["predicted_index"]]
                   for r in rows)
        assert sum(metrics["validation"]["held_out"]) == len(rows)
    # with folds, each fold's scores are those of its own held-out chips
    metrics = metrics_of(trained["folds"])
    rows = list(held_out(trained["folds"]).values())
    assert len(metrics["embeddings"]["folds"]) == 3
    for fold, scores in enumerate(metrics["embeddings"]["folds"]):
        assert_classification_scores(scores, [r for r in rows if r["fold"] == fold], len(metrics["classes"]))


def test_regression_metrics_equal_a_recomputation_from_validation_parquet(trained):
    metrics = metrics_of(trained["regression"])
    rows = list(held_out(trained["regression"]).values())
    truth = np.array([r["label"] for r in rows], "float64")
    predicted = np.array([r["predicted"] for r in rows], "float64")
    scores = metrics["embeddings"]
    assert metrics["task"] == "regression" and "classes" not in metrics
    assert scores["n"] == len(rows) == sum(metrics["validation"]["held_out"])
    assert scores["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)))
    assert scores["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert scores["r2"] == pytest.approx(r2_score(truth, predicted))
    assert scores["bias"] == pytest.approx(float(np.mean(predicted - truth)))


# 2. Each chip's label is the label data inside its footprint, computed here independently.

def test_raster_class_labels_are_the_majority_inside_each_chip_footprint(trained, chips, labels):
    for name in ("blocks", "folds"):
        for chip_id, row in held_out(trained[name]).items():
            label, covered = majority(*raster_at_centres(chips[chip_id], labels["classes"]))
            assert (row["label"], covered >= 0.5) == (label, True), chip_id
    # every chip covered at least half (--min-label-fraction 0.5) is labelled, and no other: with
    # folds every labelled chip is held out once
    covered = {chip_id for chip_id, chip in chips.items()
               if majority(*raster_at_centres(chip, labels["classes"]))[1] >= 0.5}
    assert 0 < len(covered) < len(chips)  # the nodata corner leaves some chips out
    # the footprints written are the chips' (lon/lat), holding their native centres
    frame = gpd.read_parquet(trained["folds"] / "validation.parquet")
    assert frame.crs.equals("OGC:CRS84") and sorted(frame["id"]) == sorted(covered)
    for chip_id, footprint in zip(frame["id"], frame.geometry, strict=True):
        chip = chips[chip_id]
        centre = transformer(chip["crs"], "OGC:CRS84").transform(
            (chip["native_xmin"] + chip["native_xmax"]) / 2, (chip["native_ymin"] + chip["native_ymax"]) / 2)
        assert footprint.contains(shapely.Point(centre)), chip_id
    assert set(held_out(trained["folds"])) == covered
    assert metrics_of(trained["folds"])["chips"] == len(covered)
    assert [c["value"] for c in metrics_of(trained["blocks"])["classes"]] == CLASS_VALUES.tolist()


def test_regression_labels_are_the_mean_height_inside_each_chip_footprint(trained, chips, labels):
    rows = held_out(trained["regression"])
    mine, theirs = [], []
    for chip_id, row in rows.items():
        values, valid = raster_at_centres(chips[chip_id], labels["heights"])
        assert valid.mean() >= 0.5
        mine.append(values[valid].mean())
        theirs.append(row["label"])
    # the DEM is averaged onto the 28.5 m pixels there, sampled at their centres here: close, not equal
    mine, theirs = np.array(mine), np.array(theirs)
    assert np.abs(mine - theirs).max() < 2.0 and np.corrcoef(mine, theirs)[0, 1] > 0.99


def test_polygon_labels_are_the_majority_class_by_area_and_keep_their_names(trained, chips, labels):
    frame = labels["polygon_frame"]
    names = sorted(frame["landcover"])  # text labels get the codes 0, 1, ... in sorted order
    polygons = dict(zip(frame["landcover"], frame.geometry, strict=True))
    rows = held_out(trained["polygons"])
    assert rows
    for chip_id, row in rows.items():
        x, y = pixel_centres(chips[chip_id], "EPSG:4326")
        points = shapely.points(x, y)
        codes = np.zeros(len(points), "int64")
        valid = np.zeros(len(points), bool)
        for code, name in enumerate(names):
            inside = shapely.contains(polygons[name], points)
            codes[inside], valid[inside] = code, True
        label, covered = majority(codes, valid)
        assert (row["label"], covered >= 0.5) == (label, True), chip_id
    metrics = metrics_of(trained["polygons"])
    assert [c["name"] for c in metrics["classes"]] == names
    card = json.loads((trained["polygons"] / "head.card.json").read_text())
    classes = card["properties"]["mlm:output"][0]["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2]
    assert [c["title"] for c in classes] == names
    assert [c["name"] for c in classes] == ["forest", "urban-area", "water"]  # as the schema allows names
    assert not check(card).errors


# 3. Validation is on places never seen in training.

def test_no_spatial_block_is_both_in_training_and_in_validation(trained, chips):
    labelled = held_out(trained["folds"])  # with folds, every labelled chip is held out once
    blocks = collections.defaultdict(set)
    for chip_id in labelled:
        blocks[block_of(chips[chip_id], BLOCK)].add(chip_id)
    assert len(blocks) > 10
    for name in ("blocks", "seed1"):
        validation = set(held_out(trained[name]))
        assert validation < set(labelled)
        split = [ids for ids in blocks.values() if ids & validation and ids - validation]
        assert not split, f"{name}: blocks with chips in training and validation: {split[:3]}"
    # every block's chips are held out in one fold, and the folds hold about a third each
    for block, ids in blocks.items():
        assert len({labelled[i]["fold"] for i in ids}) == 1, block
    assert collections.Counter(r["fold"] for r in labelled.values()).keys() == {0, 1, 2}
    assert metrics_of(trained["folds"])["validation"]["block_size_chips"] == BLOCK


def test_the_items_split_holds_out_whole_items(trained, chips):
    labelled = held_out(trained["folds"])
    per_item = collections.Counter(chips[i]["source_item"] for i in labelled)
    validation = held_out(trained["items"])
    held_items = {chips[i]["source_item"] for i in validation}
    assert held_items and len(held_items) < len(per_item)
    assert len(validation) == sum(per_item[item] for item in held_items)  # all of their labelled chips
    folds = held_out(trained["item-folds"])
    assert set(folds) == set(labelled)
    fold_of_item = collections.defaultdict(set)
    for chip_id, row in folds.items():
        fold_of_item[chips[chip_id]["source_item"]].add(row["fold"])
    assert all(len(f) == 1 for f in fold_of_item.values()), fold_of_item
    assert {f for fs in fold_of_item.values() for f in fs} == {0, 1}


# 4. Reproducible.

def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_split(trained):
    first, again = trained["blocks"], trained["again"]
    assert (first / "metrics.json").read_bytes() == (again / "metrics.json").read_bytes()
    for name in ("head.safetensors", "head.json", "head.card.json", "confusion.png"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert pq.read_table(first / "validation.parquet").equals(pq.read_table(again / "validation.parquet"))
    assert set(held_out(first)) != set(held_out(trained["seed1"]))
    assert metrics_of(trained["seed1"])["validation"]["seed"] == 1


# 5. The baseline.

def test_the_baseline_is_computed_on_the_band_means_of_the_same_chips(trained, embeddings, tmp_path):
    for name in ("blocks", "regression"):
        metrics = metrics_of(trained[name])
        assert metrics["baseline"]["computed"] is True
        assert metrics["baseline"]["n"] == metrics["embeddings"]["n"]
    blocks = metrics_of(trained["blocks"])
    assert blocks["baseline"]["confusion_matrix"] != blocks["embeddings"]["confusion_matrix"] or \
        blocks["baseline"]["macro_f1"] != blocks["embeddings"]["macro_f1"]
    assert metrics_of(trained["folds"])["baseline"]["computed"] is False  # --no-baseline
    # the band-means run's vectors are the means of the source pixels in each chip's window
    items = list(open_embeddings(embeddings))
    catalog = band_means_catalog(items, tmp_path / "baseline")
    assert sum(item.table(["id"]).num_rows for item in catalog) == \
        sum(item.table(["id"]).num_rows for item in items)
    item = next(i for i in catalog if i.id == "L7-olinda-r0c1")
    table = item.table(["source_item", "chip_row", "chip_col", "col_off", "row_off"]).to_pylist()
    vectors = item.vectors()
    for index, row in enumerate(table):
        if (row["chip_row"], row["chip_col"]) not in ((0, 0), (4, 7), (10, 10)):  # (10, 10): 2 px off the item
            continue
        means = []
        for band in SOURCE_BANDS:
            with rasterio.open(SOURCES / row["source_item"] / f"{band}.tif") as src:
                pixels = src.read(1, window=Window(row["col_off"], row["row_off"], CHIP, CHIP), boundless=True,
                                  fill_value=0)
            means.append(pixels.astype("float64").mean())
        np.testing.assert_allclose(vectors[index], means, rtol=1e-5, err_msg=str(row))


# 6. The card.

def test_the_card_is_a_valid_mlm_item_of_the_head_and_its_embeddings(trained, embeddings, cli):
    directory = trained["blocks"]
    card = json.loads((directory / "head.card.json").read_text())
    result = cli("validate", "--strict", directory / "head.card.json")
    assert result.exit_code == 0, result.output
    assert MLM in card["stac_extensions"] and not check(card).errors
    properties = card["properties"]
    assert properties["mlm:tasks"] == ["classification"]
    classes = properties["mlm:output"][0]["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(1, "1"), (4, "4"), (9, "9")]
    assert properties["mlm:output"][0]["result"]["shape"] == [-1, 3]
    models = {json.dumps(model_of(item), sort_keys=True) for item in open_embeddings(embeddings)}
    assert len(models) == 1 and properties["stacembed:embeddings"] == json.loads(models.pop())
    assert properties["mlm:input"][0]["input"]["shape"] == [-1, properties["stacembed:embeddings"]["dimensions"]]
    weights = card["assets"]["weights"]
    assert weights["href"] == "./head.safetensors" and "safetensors" in weights["type"]
    assert "mlm:model" in weights["roles"]
    assert weights["file:checksum"] == multihash(directory / "head.safetensors")
    assert weights["file:size"] == (directory / "head.safetensors").stat().st_size
    for asset in card["assets"].values():  # every asset there and unchanged
        path = directory / asset["href"]
        assert asset["file:checksum"] == multihash(path), asset["href"]
    assert properties["stacembed:metrics"]["embeddings"]["accuracy"] == \
        metrics_of(directory)["embeddings"]["accuracy"]
    links = {(link["rel"], link["title"]): link["href"] for link in card["links"]}
    assert Path(links[("derived_from", "Embeddings the head was trained on")]).resolve() == \
        (embeddings / "catalog.json").resolve()


def test_a_regression_card_has_no_classes(trained, cli):
    card = json.loads((trained["regression"] / "head.card.json").read_text())
    assert card["properties"]["mlm:tasks"] == ["regression"]
    output = card["properties"]["mlm:output"][0]
    assert "classification:classes" not in output and output["result"]["shape"] == [-1, 1]
    assert "https://stac-extensions.github.io/classification/v2.0.0/schema.json" not in card["stac_extensions"]
    assert not (trained["regression"] / "confusion.png").exists()
    assert cli("validate", "--strict", trained["regression"] / "head.card.json").exit_code == 0


# 8. Refusals: one line, exit 1, nothing written.

def test_bad_training_input_is_refused_in_one_line(embeddings, labels, tmp_path, cli):
    def refused(*args: object, out: Path | None = None) -> str:
        out = out or tmp_path / f"head-{len(list(tmp_path.iterdir()))}"
        result = cli("train", "--embeddings", embeddings, "--out", out, "--epochs", 1, "--no-baseline", "-q", *args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.stderr
        assert not (out / "head.card.json").exists()
        return lines[0]

    with rasterio.open(labels["classes"]) as src:
        profile, data = src.profile, src.read(1)
    far = dict(profile, transform=profile["transform"] * rasterio.Affine.translation(0, -5000))  # ~450 km south
    with rasterio.open(tmp_path / "far.tif", "w", **far) as dst:
        dst.write(data, 1)
    message = refused("--labels", tmp_path / "far.tif")
    assert "cover no chip" in message or "overlap" in message, message

    message = refused("--labels", labels["polygons"], "--label-column", "kind")
    assert "'kind'" in message and "landcover" in message, message
    message = refused("--labels", labels["polygons"])
    assert "--label-column" in message, message

    with rasterio.open(tmp_path / "one.tif", "w", **profile) as dst:
        dst.write(np.full_like(data, 4), 1)
    message = refused("--labels", tmp_path / "one.tif")
    assert "one class" in message, message

    no_crs = {k: v for k, v in profile.items() if k != "crs"}
    with rasterio.open(tmp_path / "no-crs.tif", "w", **no_crs) as dst:
        dst.write(data, 1)
    message = refused("--labels", tmp_path / "no-crs.tif")
    assert "no CRS" in message, message

    message = refused("--labels", labels["classes"], "--head", "forest")
    assert "unknown head 'forest'" in message and "mlp" in message, message

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    message = refused("--labels", labels["classes"], out=taken)
    assert "exists" in message, message
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


def test_train_through_the_cli_reports_its_scores(embeddings, labels, tmp_path, cli):
    result = cli("train", "--embeddings", embeddings, "--labels", labels["classes"], "--out", tmp_path / "head",
                 "--epochs", 2, "--no-baseline", "--block-size", BLOCK)
    assert result.exit_code == 0, result.output
    metrics = metrics_of(tmp_path / "head")
    assert f"{metrics['chips']} labelled chips" in result.stdout
    assert str(tmp_path / "head" / "head.card.json") in result.stdout
    shutil.rmtree(tmp_path / "head")
