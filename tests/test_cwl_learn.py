"""The learning tools of the application package (cwl/): train, predict, and embed-then-predict.

- ``stacembed-train.cwl``, ``stacembed-predict.cwl`` and the ``stacembed-embed-predict.cwl``
  Workflow pass ``cwltool --validate``; the Workflow, packed with the tools it runs into one
  ``$graph`` (as a platform deploys it), passes ogc-ap-validator.
- On the package's output for the sample catalog (``cwltool --no-container``, as test_cwl.py),
  with labels made from a real DEM of the same place (tests/data/olinda_dem_utm25s.tif, in
  three height classes): train writes a model directory with a valid MLM card and its metrics,
  from a raster and from a STAC label catalog; predict adds a collection of class maps on the
  embeddings' chip grids, valid STAC whose derived_from links (the embeddings, the head's card)
  resolve inside the staged-out catalog; the Workflow on the sample catalog gives the same class
  maps as the package followed by the predict tool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from stac_validation import validate_file, validate_tree
from test_cwl import CWL, PACKAGE, SAMPLE_DIR, SAMPLE_IDS, cwltool, directory, embeddings_grid, load_cwl, write_job

WORKFLOW = CWL / "stacembed-embed-predict.cwl"
LEARN_DOCUMENTS = [CWL / "stacembed-train.cwl", CWL / "stacembed-predict.cwl", WORKFLOW]
DEM = Path(__file__).parent / "data" / "olinda_dem_utm25s.tif"
MODEL_FILES = {"head.safetensors", "head.json", "head.card.json", "metrics.json", "confusion.png",
               "validation.parquet"}
# 36 chips of 64 pixels on the sample: hold out whole items, and keep chips the DEM half covers.
TRAIN_OPTIONS = {"min_label_fraction": 0.3, "split": "items", "seed": 0}


@pytest.fixture(scope="module")
def sample_results(tmp_path_factory) -> Path:
    """The main workflow of the package on the bundled sample catalog, all defaults (as in test_cwl)."""
    work = tmp_path_factory.mktemp("cwl-learn-sample")
    output = cwltool(f"{PACKAGE}#stacembed", "--stac_catalog", SAMPLE_DIR, cwd=work)
    return Path(output["results"]["path"])


@pytest.fixture(scope="module")
def dem_labels(tmp_path_factory) -> Path:
    """Three height classes of the DEM (below 5 m, 5-30 m, above), uint8 with nodata 255."""
    path = tmp_path_factory.mktemp("labels") / "dem-classes.tif"
    with rasterio.open(DEM) as src:
        dem = src.read(1, masked=True)
        profile = src.profile
    classes = np.digitize(dem.filled(np.nan), [5, 30]).astype("uint8")
    classes[np.ma.getmaskarray(dem)] = 255
    profile.update(dtype="uint8", nodata=255, count=1)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
    return path


@pytest.fixture(scope="module")
def model(sample_results, dem_labels, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cwl-train")
    job = write_job(work / "job.yml", {"embeddings": directory(sample_results),
                                        "labels": {"class": "File", "path": str(dem_labels)}, **TRAIN_OPTIONS})
    return Path(cwltool(CWL / "stacembed-train.cwl", job, cwd=work)["model"]["path"])


@pytest.fixture(scope="module")
def predicted(sample_results, model, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("cwl-predict")
    job = write_job(work / "job.yml", {"embeddings": directory(sample_results), "model": directory(model)})
    return Path(cwltool(CWL / "stacembed-predict.cwl", job, cwd=work)["results"]["path"])


def head_id(model_dir: Path) -> str:
    return json.loads((model_dir / "head.card.json").read_text())["id"]


def class_maps(results: Path, collection_id: str) -> dict[str, np.ndarray]:
    maps = {}
    for path in sorted((results / collection_id).glob("*/*.json")):
        item = json.loads(path.read_text())
        with rasterio.open(path.parent / item["assets"]["prediction"]["href"]) as ds:
            maps[item["id"]] = ds.read(1)
    return maps


# --- the documents -----------------------------------------------------------------------------

@pytest.mark.parametrize("document", LEARN_DOCUMENTS, ids=lambda p: p.name)
def test_learn_document_validates(document):
    result = subprocess.run([sys.executable, "-m", "cwltool", "--validate", str(document)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "is valid CWL" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


def packed_workflow() -> dict[str, Any]:
    """The Workflow and the tools it runs in one $graph, as a platform deploys an application
    package (cwltool --pack does not follow a reference into another document's $graph)."""
    workflow = load_cwl(WORKFLOW)
    graph = {process["id"]: process for process in load_cwl(PACKAGE)["$graph"]}
    predict = load_cwl(CWL / "stacembed-predict.cwl")
    assert workflow["steps"]["embed"]["run"] == "stacembed.cwl#stacembed-run"  # the package's tool, reused
    assert workflow["steps"]["predict"]["run"] == "stacembed-predict.cwl"
    tools = {"stacembed-run": graph["stacembed-run"], "stacembed-predict": predict}
    metadata = {key: value for key, value in workflow.items() if key.startswith(("s:", "$namespaces"))}
    workflow = {key: value for key, value in workflow.items()
                if key not in metadata and key != "cwlVersion"}
    workflow["steps"]["embed"]["run"] = "#stacembed-run"
    workflow["steps"]["predict"]["run"] = "#stacembed-predict"
    for tool in tools.values():
        for key in [key for key in tool if key.startswith(("s:", "$namespaces")) or key == "cwlVersion"]:
            del tool[key]
    return {"cwlVersion": "v1.2", **metadata, "$graph": [workflow, *tools.values()]}


def test_embed_predict_packed_is_an_ogc_application_package():
    app_package = pytest.importorskip("ap_validator.app_package", reason="ogc-ap-validator is not installed")
    package = app_package.AppPackage(cwl=packed_workflow(), entry_point="stacembed-embed-predict")
    result = package.check_all(include=["error", "hint"])
    assert result["valid"] and not result["issues"], result["issues"]


def test_learn_tools_keep_caches_out_of_their_outputs():
    for name in ("stacembed-train.cwl", "stacembed-predict.cwl"):
        tool = load_cwl(CWL / name)
        env = tool["requirements"]["EnvVarRequirement"]["envDef"]
        assert env["XDG_CACHE_HOME"].startswith("$(runtime.tmpdir)/"), name
        assert all(value.startswith("$(runtime.tmpdir)/") for key, value in env.items() if key.endswith("_DIR")), name
    assert load_cwl(CWL / "stacembed-train.cwl")["requirements"]["EnvVarRequirement"]["envDef"]["MPLCONFIGDIR"] \
        .startswith("$(runtime.tmpdir)/")


# --- train -------------------------------------------------------------------------------------

def test_train_tool_writes_a_model_directory(model):
    assert {p.name for p in model.iterdir()} == MODEL_FILES  # nothing else: no caches
    card = json.loads((model / "head.card.json").read_text())
    assert validate_file(model / "head.card.json") == []
    assert card["properties"]["mlm:tasks"] == ["classification"]
    for key, asset in card["assets"].items():
        assert (model / asset["href"]).is_file(), key
    metrics = json.loads((model / "metrics.json").read_text())
    assert (metrics["task"], metrics["head"]) == ("classification", "linear")
    assert metrics["validation"]["split"] == "items"
    assert metrics["embeddings"]["n"] > 0 and 0.0 <= metrics["embeddings"]["accuracy"] <= 1.0


def test_train_tool_with_a_stac_label_catalog(sample_results, dem_labels, tmp_path):
    """labels_dir: a staged-in catalog of one raster label item (its asset next to it)."""
    catalog = tmp_path / "labels"
    (catalog / "dem-classes").mkdir(parents=True)
    (catalog / "dem-classes" / "dem-classes.tif").write_bytes(dem_labels.read_bytes())
    with rasterio.open(dem_labels) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "dem-classes",
        "stac_extensions": ["https://stac-extensions.github.io/label/v1.0.1/schema.json"],
        "bbox": [west, south, east, north],
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                         [west, north], [west, south]]]},
        "properties": {"datetime": "2024-01-01T00:00:00Z", "label:type": "raster", "label:properties": None,
                       "label:description": "DEM height classes", "label:tasks": ["classification"],
                       "label:classes": [{"name": None, "classes": [0, 1, 2]}]},
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}],
        "assets": {"labels": {"href": "./dem-classes.tif", "type": "image/tiff; application=geotiff",
                              "roles": ["labels"]}},
    }
    (catalog / "dem-classes" / "dem-classes.json").write_text(json.dumps(item))
    (catalog / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "labels", "description": "DEM classes",
        "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "item", "href": "./dem-classes/dem-classes.json"}],
    }))
    job = write_job(tmp_path / "job.yml", {"embeddings": directory(sample_results), "labels_dir": directory(catalog),
                                            "no_baseline": True, "epochs": 5, **TRAIN_OPTIONS})
    trained = Path(cwltool(CWL / "stacembed-train.cwl", job, cwd=tmp_path / "train")["model"]["path"])
    assert {p.name for p in trained.iterdir()} == MODEL_FILES
    assert validate_file(trained / "head.card.json") == []
    assert json.loads((trained / "metrics.json").read_text())["baseline"]["computed"] is False  # no_baseline


# --- predict -----------------------------------------------------------------------------------

def test_predict_tool_adds_a_collection_of_class_maps(sample_results, model, predicted):
    collection_id = f"predictions-{head_id(model)}"
    before = {p.name for p in sample_results.iterdir()}
    assert collection_id not in before, "the input catalog was written to"
    assert {p.name for p in predicted.iterdir()} == before | {collection_id, "head"}
    assert {p.name for p in (predicted / "head").iterdir()} == MODEL_FILES
    catalog = json.loads((predicted / "catalog.json").read_text())
    children = [link["href"] for link in catalog["links"] if link["rel"] == "child"]
    assert f"./{collection_id}/collection.json" in children and len(children) == len(before)
    errors = validate_tree(predicted)
    assert len(errors) > len(SAMPLE_IDS) and not {p: e for p, e in errors.items() if e}

    documents = [predicted / collection_id / "collection.json", *sorted((predicted / collection_id).glob("*/*.json"))]
    for path in documents:
        for link in json.loads(path.read_text())["links"]:
            if link["rel"] == "derived_from":
                target = (path.parent / link["href"]).resolve()
                assert target.is_file() and target.is_relative_to(predicted.resolve()), (path.name, link["href"])
    card_links = [link["href"] for link in json.loads(documents[1].read_text())["links"]
                  if link["rel"] == "derived_from" and link["href"].endswith("head.card.json")]
    assert card_links == ["../../head/head.card.json"]

    items = [json.loads(path.read_text()) for path in documents[1:]]
    assert sorted(item["id"] for item in items) == SAMPLE_IDS
    for item in items:
        assert set(item["assets"]) == {"prediction", "predictions"}
        with rasterio.open(predicted / collection_id / item["id"] / item["assets"]["prediction"]["href"]) as ds:
            assert (ds.count, ds.dtypes[0], ds.nodata) == (1, "uint8", 255)
            assert (ds.crs, ds.transform, ds.shape) == embeddings_grid(predicted, item["id"])
            assert set(np.unique(ds.read(1))) <= {0, 1, 2, 255}


def test_embed_predict_workflow_equals_the_package_then_predict(model, predicted, tmp_path):
    job = write_job(tmp_path / "job.yml", {"stac_catalog": directory(SAMPLE_DIR), "head": directory(model)})
    results = Path(cwltool(WORKFLOW, job, cwd=tmp_path)["results"]["path"])
    assert {p.name for p in results.iterdir()} == {p.name for p in predicted.iterdir()}
    collection_id = f"predictions-{head_id(model)}"
    expected = class_maps(predicted, collection_id)
    found = class_maps(results, collection_id)
    assert sorted(found) == SAMPLE_IDS
    for item_id, classes in expected.items():
        assert np.array_equal(found[item_id], classes), item_id
