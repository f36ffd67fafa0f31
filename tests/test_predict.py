"""`stacembed predict` and `stacembed run --head`: a trained head's maps, published as STAC.

Expectations come from the files written (rasterio, pyarrow), from the head applied here to
the vectors of the embeddings GeoParquet (``read_head``, ``EmbeddingItem.vectors``), from the
embeddings COGs of the same runs, and from the bundled JSON schemas.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from conftest import REPO, SAMPLE, make_catalog, make_item

from stacembed import RunConfig, run
from stacembed.embeddings import open_embeddings
from stacembed.learn.card import read_head
from stacembed.learn.predict import predict
from stacembed.learn.train import TrainOptions, train
from stacembed.validate import validate_paths

DEM = REPO / "tests" / "data" / "olinda_dem_utm25s.tif"
CHIP = 16
CLASS_VALUES = np.array([1, 4, 9], "uint8")
NODATA = 255
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Embeddings: the sample in 16 px chips (the demo model); the same with random weights
    (another model); and a synthetic item, of the demo model too, whose top 20 rows have no
    data (its top chip row has no chip) and whose bottom 4 rows and last 2 columns are too few for a chip."""
    base = tmp_path_factory.mktemp("predict-runs")
    run(RunConfig(out=base / "sample", catalog=str(SAMPLE), chip_size=CHIP, progress=False))
    run(RunConfig(out=base / "random", catalog=str(SAMPLE), chip_size=CHIP, weights="random",
                  formats=("geoparquet",), progress=False))
    source = make_catalog(base / "source", [
        make_item(base / "source", "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(100, 130),
                  seed=1, nodata=0, nodata_rows=20)])
    run(RunConfig(out=base / "synthetic", catalog=str(source), chip_size=CHIP, progress=False))
    return {name: base / name for name in ("sample", "random", "synthetic")}


@pytest.fixture(scope="module")
def heads(runs, tmp_path_factory) -> dict[str, Path]:
    """A classifier of the DEM's height classes (values 1, 4, 9) and a regressor of its heights."""
    base = tmp_path_factory.mktemp("predict-heads")
    with rasterio.open(DEM) as src:
        profile, heights = src.profile, src.read(1)
    profile.update(dtype="uint8", nodata=NODATA)
    with rasterio.open(base / "classes.tif", "w", **profile) as dst:
        dst.write(CLASS_VALUES[np.digitize(heights, [5, 30])], 1)
    fast = {"epochs": 5, "block_size": 3, "baseline": False, "device": "cpu"}
    train(runs["sample"], base / "classes.tif", out=base / "classifier", options=TrainOptions(head="mlp", **fast),
          progress=False)
    train(runs["sample"], DEM, out=base / "regressor", options=TrainOptions(task="regression", **fast),
          progress=False)
    return {"classifier": base / "classifier", "regressor": base / "regressor", "labels": base / "classes.tif"}


@pytest.fixture(scope="module")
def predicted(runs, heads, tmp_path_factory) -> dict[str, Path]:
    """The output collection directories of `predict` runs, by name (on the CPU, as the head
    is applied here)."""
    base = tmp_path_factory.mktemp("predictions")
    done = {
        "sample": predict(runs["sample"], heads["classifier"], out=base / "sample", probabilities=True,
                          device="cpu", progress=False),
        "synthetic": predict(runs["synthetic"], heads["classifier"], out=base / "synthetic", probabilities=True,
                             device="cpu", progress=False),
        "regression": predict(runs["sample"], heads["regressor"], out=base / "regression", probabilities=True,
                              device="cpu", progress=False),
    }
    return {name: result.collection.parent for name, result in done.items()}


def item_files(collection: Path, item_id: str) -> dict[str, Path]:
    folder = collection / item_id
    return {"json": folder / f"{item_id}.json", "map": folder / f"{item_id}.tif",
            "table": folder / f"{item_id}.parquet", "probabilities": folder / f"{item_id}-probabilities.tif"}


def embeddings_cog(run_out: Path, item_id: str) -> Path:
    return next(run_out.glob(f"*/{item_id}/{item_id}.tif"))


def read_band(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "shape": (ds.height, ds.width),
                           "dtype": ds.dtypes[0], "nodata": ds.nodata, "count": ds.count}


def expected_by_head(head_dir: Path, run_out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per embedding item: the chips' rows and columns and what the head says of their vectors,
    computed here (the head's class indices mapped to the card's class values)."""
    head, card = read_head(head_dir)
    classes = card["properties"]["mlm:output"][0].get("classification:classes")
    found = {}
    for item in open_embeddings(run_out):
        vectors = item.vectors()
        table = item.table(["id", "chip_row", "chip_col"])
        entry = {"id": np.array(table.column("id").to_pylist()), "row": table.column("chip_row").to_numpy(),
                 "col": table.column("chip_col").to_numpy()}
        if classes is None:
            entry["value"] = head.predict(vectors)
        else:
            entry["value"] = np.array([c["value"] for c in classes])[head.predict(vectors)]
            entry["proba"] = head.predict_proba(vectors)
        found[item.id] = entry
    return found


def multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


# 7. Class maps on the chip grid, equal to the head applied here.

def test_class_maps_sit_on_the_chip_grid_of_the_embeddings(runs, heads, predicted):
    for name in ("sample", "synthetic"):
        expected = expected_by_head(heads["classifier"], runs[name])
        for item_id, chips in expected.items():
            files = item_files(predicted[name], item_id)
            values, profile = read_band(files["map"])
            emb, emb_profile = read_band(embeddings_cog(runs[name], item_id))
            assert {k: profile[k] for k in ("crs", "transform", "shape")} == \
                   {k: emb_profile[k] for k in ("crs", "transform", "shape")}
            assert (profile["dtype"], profile["nodata"], profile["count"]) == ("uint8", NODATA, 1)
            values = values[0]
            np.testing.assert_array_equal(values[chips["row"], chips["col"]], chips["value"])
            no_chip = np.ones(values.shape, bool)
            no_chip[chips["row"], chips["col"]] = False
            assert (values[no_chip] == NODATA).all() and (values[~no_chip] != NODATA).all()
            np.testing.assert_array_equal(no_chip, np.isnan(emb).all(axis=0))
            # the table: one row per chip, the same prediction as the map
            table = pq.read_table(files["table"]).to_pylist()
            by_id = {row["id"]: row for row in table}
            assert sorted(by_id) == sorted(chips["id"])
            for chip_id, row, col, value in zip(chips["id"], chips["row"], chips["col"], chips["value"],
                                                strict=True):
                assert (by_id[chip_id]["chip_row"], by_id[chip_id]["chip_col"]) == (row, col)
                assert by_id[chip_id]["predicted"] == value
            if name == "synthetic":  # no chip in the top row (no data), the bottom row and the last column
                assert (values[0] == NODATA).all() and (values[-1] == NODATA).all()  # (4 and 2 px of data)
                assert (values[:, -1] == NODATA).all() and (values[1:-1, :-1] != NODATA).all()


def test_probabilities_are_the_heads_and_sum_to_one(runs, heads, predicted):
    expected = expected_by_head(heads["classifier"], runs["sample"])
    for item_id, chips in expected.items():
        files = item_files(predicted["sample"], item_id)
        chances, profile = read_band(files["probabilities"])
        classes, map_profile = read_band(files["map"])
        assert (profile["count"], profile["dtype"]) == (3, "float32") and np.isnan(profile["nodata"])
        assert (profile["transform"], profile["shape"]) == (map_profile["transform"], map_profile["shape"])
        at_chips = chances[:, chips["row"], chips["col"]].T
        np.testing.assert_allclose(at_chips.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(at_chips, chips["proba"], atol=1e-6)
        np.testing.assert_array_equal(CLASS_VALUES[at_chips.argmax(axis=1)], classes[0, chips["row"], chips["col"]])
        no_chip = classes[0] == NODATA
        assert np.isnan(chances[:, no_chip]).all()
        table = pq.read_table(files["table"], columns=["id", "probability"]).to_pylist()
        best = dict(zip(chips["id"], chips["proba"].max(axis=1), strict=True))
        assert [row["probability"] for row in table] == pytest.approx([best[row["id"]] for row in table], abs=1e-6)


def test_prediction_items_validate_and_link_the_embeddings_and_the_head(runs, heads, predicted):
    catalog = predicted["sample"].parent / "catalog.json"
    reports = list(validate_paths([catalog]))
    assert len(reports) == 2 + 4 and all(report.line(strict=True) is None for report in reports), \
        [report.line(strict=True) for report in reports]
    collection = json.loads((predicted["sample"] / "collection.json").read_text())
    derived = {Path(predicted["sample"], link["href"]).resolve() for link in collection["links"]
               if link["rel"] == "derived_from"}
    assert derived == {(runs["sample"] / "catalog.json").resolve(), (heads["classifier"] / "head.card.json").resolve()}
    card = json.loads((heads["classifier"] / "head.card.json").read_text())
    for item in open_embeddings(runs["sample"]):
        path = item_files(predicted["sample"], item.id)["json"]
        stac = json.loads(path.read_text())
        assert {CLASSIFICATION, PROJECTION, PROCESSING, FILE} <= set(stac["stac_extensions"])
        links = {Path(path.parent, link["href"]).resolve() for link in stac["links"] if link["rel"] == "derived_from"}
        assert links == {Path(item.stac_item.get_self_href()).resolve(),
                         (heads["classifier"] / "head.card.json").resolve()}
        assert stac["properties"]["stacembed:head"] == card["id"]
        asset = stac["assets"]["prediction"]
        values, profile = read_band(path.parent / asset["href"])
        assert asset["proj:transform"] == list(profile["transform"])[:6]
        assert asset["proj:shape"] == list(profile["shape"])
        counted = {c["value"]: c.get("count") for c in asset["classification:classes"]}
        assert counted.pop(NODATA) is None
        assert counted == {int(v): int((values == v).sum()) for v in CLASS_VALUES}
        for asset in stac["assets"].values():
            assert asset["file:checksum"] == multihash(path.parent / asset["href"]), asset["href"]


def test_no_table_writes_the_same_maps_and_no_chip_table(runs, heads, predicted, tmp_path, cli):
    result = cli("predict", "--embeddings", runs["sample"], "--model", heads["classifier"], "--out", tmp_path,
                 "--probabilities", "--device", "cpu", "--no-table", "-q")
    assert result.exit_code == 0, result.output
    (collection,) = tmp_path.glob("predictions-*/collection.json")
    assert "table" not in json.loads(collection.read_text())["item_assets"]
    assert not list(tmp_path.rglob("*.parquet"))
    for item in open_embeddings(runs["sample"]):
        without, with_table = item_files(collection.parent, item.id), item_files(predicted["sample"], item.id)
        assert without["map"].read_bytes() == with_table["map"].read_bytes()
        assert without["probabilities"].read_bytes() == with_table["probabilities"].read_bytes()
        assert set(json.loads(without["json"].read_text())["assets"]) == {"prediction", "probabilities"}
    assert [r.line(strict=True) for r in validate_paths([tmp_path / "catalog.json"]) if r.line(strict=True)] == []


def test_regression_maps_are_float32_with_nan_where_no_chip(runs, heads, predicted):
    _, card = read_head(heads["regressor"])
    assert "classification:classes" not in card["properties"]["mlm:output"][0]
    expected = expected_by_head(heads["regressor"], runs["sample"])
    for item_id, chips in expected.items():
        files = item_files(predicted["regression"], item_id)
        values, profile = read_band(files["map"])
        assert (profile["dtype"], profile["count"]) == ("float32", 1) and np.isnan(profile["nodata"])
        np.testing.assert_allclose(values[0, chips["row"], chips["col"]], chips["value"], rtol=1e-6)
        no_chip = np.ones(profile["shape"], bool)
        no_chip[chips["row"], chips["col"]] = False
        assert np.isnan(values[0][no_chip]).all() and np.isfinite(values[0][~no_chip]).all()
        assert not files["probabilities"].exists()  # values have no class probabilities
        stac = json.loads(files["json"].read_text())
        assert CLASSIFICATION not in stac["stac_extensions"] and "probabilities" not in stac["assets"]
    assert all(report.line(strict=True) is None
               for report in validate_paths([predicted["regression"].parent / "catalog.json"]))


# 8. Refusals.

def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stacembed: error: "), result.stderr
    return lines[0]


def test_predict_refuses_a_head_trained_on_another_model(runs, heads, tmp_path, cli):
    message = one_line_error(cli("predict", "--embeddings", runs["random"], "--model", heads["classifier"],
                                 "--out", tmp_path / "out", "-q"))
    assert "trained on" in message and "stacembed-demo-landsat" in message, message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tif"))


def test_predict_refuses_what_is_not_a_head(runs, heads, tmp_path, cli):
    message = one_line_error(cli("predict", "--embeddings", runs["sample"], "--model", tmp_path,
                                 "--out", tmp_path / "out", "-q"))
    assert "head.card.json" in message, message
    message = one_line_error(cli("run", "--catalog", SAMPLE, "--chip-size", CHIP, "--out", tmp_path / "run",
                                 "--head", tmp_path / "nothing", "-q"))
    assert "head.card.json" in message, message
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.parquet"))


def test_run_with_a_head_of_another_model_refuses_before_embedding(heads, tmp_path, cli):
    """`embed_and_predict` says the head is checked against the run's model before any pixel is
    read: a run whose embeddings the head cannot take must not embed first and refuse after."""
    out = tmp_path / "run"
    message = one_line_error(cli("run", "--catalog", SAMPLE, "--chip-size", CHIP, "--weights", "random",
                                 "--out", out, "--head", heads["classifier"], "-q"))
    assert "trained on" in message, message
    assert not out.exists() or not any(out.rglob("*.parquet")), sorted(p.name for p in out.rglob("*.parquet"))


# 9. `stacembed run --head`: embeddings and predictions in one --out.

def test_run_with_a_head_writes_embeddings_and_the_same_predictions_as_predict(heads, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("run", "--catalog", SAMPLE, "--chip-size", CHIP, "--out", out, "--head", heads["classifier"],
                 "--probabilities")
    assert result.exit_code == 0, result.output
    assert "484 chips of 4 item(s) predicted" in result.stdout
    catalog = json.loads((out / "catalog.json").read_text())
    children = sorted(link["href"] for link in catalog["links"] if link["rel"] == "child")
    _, card = read_head(heads["classifier"])
    collection = f"predictions-{card['id']}"
    assert len(children) == 2 and any(collection in href for href in children), children
    assert len(open_embeddings(out)) == 4  # the prediction items are not embeddings
    assert all(report.line(strict=True) is None for report in validate_paths([out / "catalog.json"]))
    separate = predict(out, heads["classifier"], out=tmp_path / "separate", probabilities=True, progress=False)
    assert separate.chips == 484
    for item in open_embeddings(out):
        together, apart = item_files(out / collection, item.id), item_files(separate.collection.parent, item.id)
        for key in ("map", "probabilities"):
            np.testing.assert_array_equal(read_band(together[key])[0], read_band(apart[key])[0])
        columns = ["id", "chip_row", "chip_col", "predicted", "probability"]
        assert pq.read_table(together["table"], columns=columns).equals(pq.read_table(apart["table"], columns=columns))
        with rasterio.open(together["map"]) as classes, rasterio.open(embeddings_cog(out, item.id)) as emb:
            assert (classes.transform, classes.crs, classes.shape) == (emb.transform, emb.crs, emb.shape)
