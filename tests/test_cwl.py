"""The OGC application package (cwl/) and the container image, validated and run end to end.

- Every CWL document passes ``cwltool --validate``; the package passes ogc-ap-validator.
- The package runs with ``cwltool --no-container`` (the stacembed of this environment) on the
  bundled sample catalog, on catalogs as stage-in tools write them (items linked from catalog.json,
  local relative or remote asset hrefs) with a model directory, and scattered over several catalogs
  and merged. The staged-out catalog is checked after cwltool moved it: catalog.json, relative asset
  hrefs that resolve, readable GeoParquet and COG, valid STAC, and nothing else (no caches).
- The standalone tools: models list/describe, and publish then search against pgstac.
- The analysis tools on the package's output for the sample: similar (a GeoParquet of the k best
  chips), cluster and change (the embeddings catalog with a collection of class or change maps
  added, valid STAC, its derived_from links resolving inside it).
- In the image with podman (``-k podman``; they run when ``STACEMBED_CONTAINER_TESTS=1``, after
  ``scripts/build-image.sh``): the image's default job, and the package under ``cwltool --podman``.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import yaml
from conftest import DEMO_CARD, REPO, make_catalog, make_item
from stac_validation import validate_tree

import stacembed

CWL = REPO / "cwl"
PACKAGE = CWL / "stacembed.cwl"
DOCUMENTS = sorted(CWL.glob("*.cwl"))
IMAGE = f"ghcr.io/stacembed/stacembed:{stacembed.__version__}"
SAMPLE_DIR = REPO / "catalogs" / "sample"
SAMPLE_IDS = [f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)]
CONTAINER_ENV = "STACEMBED_CONTAINER_TESTS"
# Links that name inputs where they were staged in; see test_staged_out_catalog_links_no_input_paths.
INPUT_LINK_RELS = {"derived_from", "emb:source-data"}


# --- running cwltool ---------------------------------------------------------------------------

def cwltool(*args: Any, cwd: Path, podman: bool = False) -> dict[str, Any]:
    """Run cwltool and return its output object; fail with its log when the run fails."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The tools call `stacembed` and `python3`: this environment's, without a container.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if podman:
        # As root, cwltool's --userns=keep-id must go: scripts/cwltool-podman/podman first on PATH.
        wrappers = cwd / "wrappers"
        wrappers.mkdir()
        shutil.copyfile(REPO / "scripts" / "cwltool-podman" / "podman", wrappers / "podman")
        (wrappers / "podman").chmod(0o755)
        env["PATH"] = os.pathsep.join([str(wrappers), env["PATH"]])
    mode = ["--podman"] if podman else ["--no-container"]
    cmd = [sys.executable, "-m", "cwltool", "--quiet", *mode, "--outdir", str(cwd / "out"), *map(str, args)]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"cwltool failed ({result.returncode}):\n{result.stderr[-6000:]}"
    return json.loads(result.stdout)


def write_job(path: Path, job: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(job))
    return path


def directory(path: Path) -> dict[str, str]:
    return {"class": "Directory", "path": str(path)}


# --- input catalogs ------------------------------------------------------------------------------

def stage_in_catalog(root: Path, scenes: dict[str, int], *, collection: str = "sentinel-x", dialect: str = "1.0",
                     assets_root: Path | None = None, href_base: str | None = None,
                     collections: dict[str, str] | None = None) -> Path:
    """A catalog as stage-in tools write it: catalog.json linking ``<id>/<id>.json`` items directly
    (no collection document), each item naming its collection (``collection``, or by item id in
    ``collections``). Scenes are item id -> seed (which sets the month: seed 1 is February).
    Asset files go next to the items (relative hrefs), or under ``assets_root`` served at
    ``href_base`` (remote hrefs)."""
    root.mkdir(parents=True)
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    for item_id, seed in scenes.items():
        item = make_item(assets_root or root, item_id, dialect=dialect, origin=(500000.0 + seed * 5000, 9100000.0),
                         shape=(64, 96), seed=seed, collection=(collections or {}).get(item_id, collection))
        if href_base:
            for asset in item["assets"].values():
                asset["href"] = f"{href_base}/{item_id}/{asset['href'].removeprefix('./')}"
        item["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
        (root / item_id).mkdir(exist_ok=True)
        (root / item_id / f"{item_id}.json").write_text(json.dumps(item))
        links.append({"rel": "item", "href": f"./{item_id}/{item_id}.json", "type": "application/geo+json"})
    version = "1.0.0" if dialect == "1.0" else "1.1.0"
    (root / "catalog.json").write_text(json.dumps(
        {"type": "Catalog", "stac_version": version, "id": "staged", "description": "staged-in", "links": links}))
    return root


def model_directory(root: Path) -> Path:
    """A model directory: the demo card as model.json under another name, its weights renamed."""
    root.mkdir(parents=True)
    card = json.loads(DEMO_CARD.read_text())
    card["id"] = card["properties"]["mlm:name"] = "model-dir-card"
    card["assets"]["weights"]["href"] = "./weights.safetensors"
    shutil.copyfile(DEMO_CARD.with_suffix(".safetensors"), root / "weights.safetensors")
    (root / "model.json").write_text(json.dumps(card))
    return root


@pytest.fixture(scope="module")
def http_files(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server with Range support (as GDAL needs) over a new directory."""
    root = tmp_path_factory.mktemp("served")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.reply(body=False)

        def do_GET(self) -> None:
            self.reply(body=True)

        def reply(self, body: bool) -> None:
            path = root / unquote(urlparse(self.path).path).lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                first, _, last = ranged[6:].partition("-")
                start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
                data, total = data[start:end + 1], len(data)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


# --- checking a staged-out catalog --------------------------------------------------------------

def check_results(results: Path) -> dict[str, list[pystac.Item]]:
    """What a platform needs of a stage-out: a self-contained, valid, relocatable STAC catalog.

    Returns the items by collection id."""
    # Stage-out moves the directory: check it where it lands, and once more after another move.
    moved = Path(tempfile.mkdtemp(prefix="moved-", dir=results.parent)) / results.name
    shutil.copytree(results, moved)
    for root in (results, moved):
        assert (root / "catalog.json").is_file()
        catalog = json.loads((root / "catalog.json").read_text())
        children = [link["href"] for link in catalog["links"] if link["rel"] == "child"]
        # Nothing but the catalog and its collections: no caches (HOME is the output directory).
        expected = {"catalog.json"} | {href.removeprefix("./").split("/")[0] for href in children}
        assert {p.name for p in root.iterdir()} == expected
        errors = validate_tree(root)
        assert errors and not {p: e for p, e in errors.items() if e}
    found: dict[str, list[pystac.Item]] = {}
    for collection in pystac.Catalog.from_file(str(moved / "catalog.json")).get_children():
        items = list(collection.get_items())
        assert items, f"collection {collection.id} has no items"
        found[collection.id] = items
        raw_collection = json.loads(Path(collection.get_self_href()).read_text())
        mirror = raw_collection["assets"]["geoparquet-items"]["href"]
        assert mirror == "./items.parquet"
        assert pq.read_table(Path(collection.get_self_href()).parent / mirror).num_rows == len(items)
        for item in items:
            raw = json.loads(Path(item.get_self_href()).read_text())
            for key, asset in raw["assets"].items():
                href = asset["href"]
                assert "://" not in href and not href.startswith("/"), f"{item.id} {key}: {href} is not relative"
                path = Path(item.get_self_href()).parent / href
                assert path.is_file(), f"{item.id} {key}: {href} does not resolve"
                assert asset["file:size"] == path.stat().st_size
                if path.suffix == ".parquet":
                    table = pq.read_table(path)
                    assert table.num_rows > 0 and "embedding" in table.column_names
                else:
                    with rasterio.open(path) as ds:  # embeddings: a band per dimension; quicklooks: RGBA
                        bands = 4 if key in ("thumbnail", "overview") else collection.extra_fields["emb:dimensions"]
                        assert ds.count == bands
    return found


def item_ids(found: dict[str, list[pystac.Item]]) -> dict[str, list[str]]:
    return {cid: sorted(i.id for i in items) for cid, items in found.items()}


# --- the documents ---------------------------------------------------------------------------------

def load_cwl(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def processes(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document.get("$graph", [document])


def as_dict(section: Any) -> dict[str, Any]:
    """Requirements/hints in either CWL form (a map by class, or a list of {class: ...})."""
    if isinstance(section, list):
        return {entry["class"]: entry for entry in section}
    return section or {}


def test_there_is_a_package_and_a_tool_per_command():
    assert {p.name for p in DOCUMENTS} == {
        "stacembed.cwl", "stacembed-search.cwl", "stacembed-publish.cwl",
        "stacembed-models-list.cwl", "stacembed-models-describe.cwl",
        "stacembed-similar.cwl", "stacembed-cluster.cwl", "stacembed-change.cwl",
        "stacembed-train.cwl", "stacembed-predict.cwl", "stacembed-embed-predict.cwl",
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_cwl_document_validates(document):
    result = subprocess.run([sys.executable, "-m", "cwltool", "--validate", str(document)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "is valid CWL" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("entry_point", ["stacembed", "stacembed-scatter"])
def test_package_is_an_ogc_application_package(entry_point):
    app_package = pytest.importorskip("ap_validator.app_package", reason="ogc-ap-validator is not installed")
    package = app_package.AppPackage.from_url(str(PACKAGE), entry_point=entry_point)
    result = package.check_all(include=["error", "hint"])
    assert result["valid"] and not result["issues"], result["issues"]


def test_documents_agree_on_version_image_and_placement():
    """One image name and version everywhere, DockerRequirement under hints (so --no-container
    runs the same documents), and the version the Dockerfile labels the image with."""
    version = stacembed.__version__
    for path in DOCUMENTS:
        document = load_cwl(path)
        assert document["cwlVersion"] == "v1.2"
        assert str(document["s:softwareVersion"]) == version, path.name
        assert document["s:codeRepository"] == "https://github.com/stacembed/stacembed"
        for process in processes(document):
            if process["class"] != "CommandLineTool":
                continue
            assert "DockerRequirement" not in as_dict(process.get("requirements")), process["id"]
            assert as_dict(process.get("hints"))["DockerRequirement"]["dockerPull"] == IMAGE, process["id"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"ARG VERSION={version}\n" in dockerfile
    assert 'ENTRYPOINT ["stacembed"]' in dockerfile


def test_package_keeps_caches_out_of_the_results_and_stages_out_its_working_directory():
    graph = {p["id"]: p for p in processes(load_cwl(PACKAGE))}
    for tool_id in ("stacembed-run", "stacembed-merge"):
        tool = graph[tool_id]
        assert tool["outputs"]["results"] == {"type": "Directory", "outputBinding": {"glob": "."}}
    env = as_dict(graph["stacembed-run"]["requirements"])["EnvVarRequirement"]["envDef"]
    for name in ("STACEMBED_CACHE", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME"):
        assert env[name].startswith("$(runtime.tmpdir)/"), name
    assert as_dict(graph["stacembed-run"]["requirements"])["NetworkAccess"]["networkAccess"] is True
    workflow = graph["stacembed"]
    assert workflow["inputs"]["stac_catalog"]["type"] == "Directory"
    assert workflow["outputs"]["results"]["type"] == "Directory"
    assert {"stac_catalog", "collection", "model", "model_dir", "chip_size", "formats", "bbox",
            "datetime"} <= set(workflow["inputs"])


# --- the package without a container ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_results(tmp_path_factory) -> Path:
    """The main workflow on the bundled sample catalog, all defaults."""
    work = tmp_path_factory.mktemp("cwl-sample")
    output = cwltool(f"{PACKAGE}#stacembed", "--stac_catalog", SAMPLE_DIR, cwd=work)
    return Path(output["results"]["path"])


def test_package_on_the_sample_catalog(sample_results):
    found = check_results(sample_results)
    assert item_ids(found) == {"landsat-etm-sample-stacembed-demo-landsat": SAMPLE_IDS}
    item = found["landsat-etm-sample-stacembed-demo-landsat"][0]
    assert set(item.assets) == {"embeddings", "embeddings-geotiff", "thumbnail", "overview"}
    params = item.properties["emb:runtime_parameters"]
    assert params["mlm:name"] == "stacembed-demo-landsat" and params["chip_size"] == 64


def test_package_on_a_stage_in_catalog_with_a_model_directory(tmp_path):
    """Items linked straight from catalog.json (as stage-in tools write them), selected by
    collection and datetime, embedded with the card and weights of a model directory."""
    staged = stage_in_catalog(tmp_path / "staged", {"scene-a": 1, "scene-b": 2, "scene-c": 3, "scene-d": 1},
                              collections={"scene-d": "another-collection"})
    job = write_job(tmp_path / "job.yml", {
        "stac_catalog": directory(staged),
        "collection": "sentinel-x",
        "datetime": "2024-02-01/2024-03-31",  # scene-a (February) and scene-b (March)
        "model_dir": directory(model_directory(tmp_path / "model")),
        "model": "stacembed-demo-landsat",  # model_dir wins
        "chip_size": 32,
        "formats": ["geoparquet"],
    })
    output = cwltool(f"{PACKAGE}#stacembed", job, cwd=tmp_path)
    found = check_results(Path(output["results"]["path"]))
    assert item_ids(found) == {"sentinel-x-model-dir-card": ["scene-a", "scene-b"]}
    for item in found["sentinel-x-model-dir-card"]:
        assert set(item.assets) == {"embeddings", "thumbnail", "overview"}
        params = item.properties["emb:runtime_parameters"]
        assert params["mlm:name"] == "model-dir-card" and params["chip_size"] == 32
        assert pq.read_table(item.assets["embeddings"].get_absolute_href()).num_rows == 2 * 3


def test_package_on_a_stage_in_catalog_with_remote_hrefs(tmp_path, http_files):
    """Stage-in that leaves asset hrefs remote: the assets are read over HTTP; the outputs are local."""
    served, base = http_files
    staged = stage_in_catalog(tmp_path / "staged", {"remote-1": 4}, dialect="1.1", assets_root=served,
                              href_base=base)
    assert not list(staged.rglob("*.tif"))
    west, south, east, north = json.loads((staged / "remote-1" / "remote-1.json").read_text())["bbox"]
    job = write_job(tmp_path / "job.yml", {"stac_catalog": directory(staged),
                                            "bbox": f"{west - 0.01},{south - 0.01},{east + 0.01},{north + 0.01}"})
    output = cwltool(f"{PACKAGE}#stacembed", job, cwd=tmp_path)
    found = check_results(Path(output["results"]["path"]))
    assert item_ids(found) == {"sentinel-x-stacembed-demo-landsat": ["remote-1"]}


def test_scatter_over_several_catalogs_merges_the_results(tmp_path):
    """Three catalogs: a catalog -> collection -> items tree, and two stage-in catalogs of one
    collection that share an item. The merge joins that collection and keeps the shared item once."""
    synthetic_root = tmp_path / "synthetic"
    synthetic_root.mkdir()
    synthetic = make_catalog(synthetic_root, [
        make_item(synthetic_root, "syn-0", dialect="1.0", origin=(500000.0, 9100000.0), shape=(64, 64), seed=1)],
        dialect="1.0").parent
    first = stage_in_catalog(tmp_path / "first", {"scene-a": 1, "scene-b": 2})
    second = stage_in_catalog(tmp_path / "second", {"scene-b": 2, "scene-c": 3})
    job = write_job(tmp_path / "job.yml", {"stac_catalogs": [directory(p) for p in (synthetic, first, second)]})
    output = cwltool("--parallel", f"{PACKAGE}#stacembed-scatter", job, cwd=tmp_path)
    results = Path(output["results"]["path"])
    found = check_results(results)
    assert item_ids(found) == {
        "synthetic-stacembed-demo-landsat": ["syn-0"],
        "sentinel-x-stacembed-demo-landsat": ["scene-a", "scene-b", "scene-c"],
    }
    joined = json.loads((results / "sentinel-x-stacembed-demo-landsat" / "collection.json").read_text())
    assert joined["extent"]["temporal"]["interval"] == [["2024-02-15T10:00:00Z", "2024-04-15T10:00:00Z"]]
    sources = [link["href"] for link in joined["links"] if link["rel"] == "emb:source-data"]
    assert len(sources) == 2


def test_staged_out_catalog_links_no_input_paths(sample_results):
    for path in sample_results.rglob("*.json"):
        document = json.loads(path.read_text())
        hrefs = [link["href"] for link in document.get("links", []) if link.get("rel") in INPUT_LINK_RELS]
        hrefs += [asset["href"] for asset in document.get("assets", {}).values()]
        for href in hrefs:
            assert not Path(href).is_absolute(), f"{path.relative_to(sample_results)}: {href}"


# --- the standalone tools ------------------------------------------------------------------------------

def test_models_tools(tmp_path):
    listed = cwltool(CWL / "stacembed-models-list.cwl", cwd=tmp_path)
    lines = Path(listed["models"]["path"]).read_text().splitlines()
    assert any(line.startswith("stacembed-demo-landsat\t") for line in lines)
    described = cwltool(CWL / "stacembed-models-describe.cwl", "--model_dir", model_directory(tmp_path / "model"),
                        cwd=tmp_path / "describe")
    card = json.loads(Path(described["description"]["path"]).read_text())
    assert card["name"] == "model-dir-card" and card["embedding_size"] == 96


def test_search_tool_on_a_staged_catalog(tmp_path):
    staged = stage_in_catalog(tmp_path / "staged", {"scene-a": 1, "scene-b": 2})
    output = cwltool(CWL / "stacembed-search.cwl", "--stac_catalog", staged, "--ids", "scene-b",
                     "--format", "ndjson", cwd=tmp_path)
    lines = Path(output["items_file"]["path"]).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["scene-b"]


@pytest.mark.pgstac
def test_publish_then_search_tools_round_trip(pgstac_api, sample_results, tmp_path):
    collection = "landsat-etm-sample-stacembed-demo-landsat"
    base = "https://data.example.com/stacembed/run-1"
    try:
        published = cwltool(CWL / "stacembed-publish.cwl", "--results", sample_results, "--api", pgstac_api.url,
                            "--asset_base_href", base, "--headers", "X-Test=1", cwd=tmp_path / "publish")
        assert "published 4 item(s)" in Path(published["log"]["path"]).read_text()
        output = cwltool(CWL / "stacembed-search.cwl", "--api", pgstac_api.url, "--collection", collection,
                         "--format", "geoparquet", cwd=tmp_path / "search")
        items = pq.read_table(output["items_file"]["path"]).to_pylist()
        assert sorted(i["id"] for i in items) == SAMPLE_IDS
        first = items[0]
        assert first["assets"]["embeddings"]["href"] == f"{base}/{collection}/{first['id']}/{first['id']}.parquet"
    finally:
        pgstac_api.delete_collection(collection)


# --- in the image, with podman ----------------------------------------------------------------------

def require_image() -> None:
    if os.environ.get(CONTAINER_ENV) != "1":
        pytest.skip(f"container tests run with {CONTAINER_ENV}=1, after scripts/build-image.sh")
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/build-image.sh installs it)")
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.fail(f"image {IMAGE} not built (scripts/build-image.sh)")


def test_image_metadata_podman():
    require_image()
    inspect = json.loads(subprocess.run(["podman", "image", "inspect", IMAGE], capture_output=True, text=True,
                                        check=True).stdout)[0]
    config = inspect["Config"]
    assert config["Entrypoint"] == ["stacembed"]
    assert config["User"] not in ("", "0", "root", "0:0")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == stacembed.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == "https://github.com/stacembed/stacembed"
    versions = subprocess.run(["podman", "run", "--rm", "--entrypoint", "python3", IMAGE, "-c",
                               "import torch; print(torch.__version__, torch.version.cuda)"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert versions[1] == "None", f"the default image should have the CPU build of torch, has {versions}"


def test_image_runs_the_default_job_podman(tmp_path):
    """The README's `docker run --rm -v "$PWD:/data" IMAGE run --out /data/out`, as the image's user."""
    require_image()
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000) if os.geteuid() == 0 else data.chmod(0o777)
    subprocess.run(["podman", "run", "--rm", "-v", f"{data}:/data", IMAGE, "run", "--out", "/data/out"],
                   check=True, capture_output=True, text=True, timeout=600)
    assert item_ids(check_results(data / "out")) == {"landsat-etm-sample-stacembed-demo-landsat": SAMPLE_IDS}


def test_package_runs_in_podman(tmp_path):
    """The package under cwltool --podman: read-only root, no network but what it asks for, HOME
    the output directory, inputs staged read-only. Scattered over the sample and a stage-in
    catalog, with a model directory."""
    require_image()
    staged = stage_in_catalog(tmp_path / "staged", {"scene-a": 1})
    job = write_job(tmp_path / "job.yml", {
        "stac_catalogs": [directory(SAMPLE_DIR), directory(staged)],
        "model_dir": directory(model_directory(tmp_path / "model")),
    })
    output = cwltool(f"{PACKAGE}#stacembed-scatter", job, cwd=tmp_path, podman=True)
    found = check_results(Path(output["results"]["path"]))
    assert item_ids(found) == {
        "landsat-etm-sample-model-dir-card": SAMPLE_IDS,
        "sentinel-x-model-dir-card": ["scene-a"],
    }


def test_run_package_script_podman(tmp_path):
    """scripts/run-package-podman.sh, as documented: the image's default job, then the package."""
    require_image()
    env = {**os.environ, "OUTDIR": str(tmp_path / "script"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    result = subprocess.run(["bash", str(REPO / "scripts" / "run-package-podman.sh")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = Path(result.stdout.strip().splitlines()[-1])
    assert item_ids(check_results(results)) == {"landsat-etm-sample-stacembed-demo-landsat": SAMPLE_IDS}


# --- the analysis tools, on the package's output --------------------------------------------------------

def derived_collection(results: Path, collection_id: str, embeddings: Path) -> list[dict[str, Any]]:
    """The items of the collection an analysis tool added to a copy of ``embeddings``, checked:
    the copy holds the embeddings' collections and the new one (and nothing else), every STAC
    document validates (stacembed.validate), and derived_from links resolve inside the copy."""
    from stacembed.validate import validate_paths

    before = {p.name for p in embeddings.iterdir()}
    assert collection_id not in before, "the input catalog was written to"
    assert {p.name for p in results.iterdir()} == before | {collection_id}
    catalog = json.loads((results / "catalog.json").read_text())
    children = sorted(link["href"] for link in catalog["links"] if link["rel"] == "child")
    assert f"./{collection_id}/collection.json" in children and len(children) == len(before)
    reports = list(validate_paths([results]))
    assert len(reports) > 1 and not [r.line() for r in reports if r.line()]
    items = []
    for path in sorted((results / collection_id).glob("*/*.json")):
        document = json.loads(path.read_text())
        for link in document["links"]:
            if link["rel"] == "derived_from":
                target = (path.parent / link["href"]).resolve()
                assert target.is_file() and target.is_relative_to(results.resolve()), link["href"]
        items.append(document)
    return items


def embeddings_grid(results: Path, item_id: str) -> tuple[Any, Any, tuple[int, int]]:
    """CRS, transform and shape of the sample item's embeddings COG (its chip grid)."""
    with rasterio.open(results / "landsat-etm-sample-stacembed-demo-landsat" / item_id / f"{item_id}.tif") as ds:
        return ds.crs, ds.transform, ds.shape


def test_similar_tool_on_the_sample_results(sample_results, tmp_path):
    """A query chip's own vector comes first, with similarity 1; the k best, best first, as GeoParquet."""
    job = write_job(tmp_path / "job.yml", {"embeddings": directory(sample_results),
                                            "chip": ["L7-olinda-r0c1:1:2"], "k": 5})
    output = cwltool(CWL / "stacembed-similar.cwl", job, cwd=tmp_path)
    path = Path(output["results"]["path"])
    assert path.name == "results.geoparquet"
    table = pq.read_table(path)
    assert b"geo" in table.schema.metadata
    rows = table.to_pylist()
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    first = rows[0]
    assert (first["item"], first["chip_row"], first["chip_col"]) == ("L7-olinda-r0c1", 1, 2)
    assert first["similarity"] == pytest.approx(1.0, abs=1e-5)
    scores = [row["similarity"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert {row["collection"] for row in rows} == {"landsat-etm-sample-stacembed-demo-landsat"}


def test_cluster_tool_on_the_sample_results(sample_results, tmp_path):
    """k-means class maps added to a copy of the embeddings catalog; then the same clusters
    applied from that output (centroids_dir) give the same class maps."""
    import numpy as np

    job = write_job(tmp_path / "job.yml", {"embeddings": directory(sample_results), "k": 3, "seed": 1})
    results = Path(cwltool(CWL / "stacembed-cluster.cwl", job, cwd=tmp_path / "fit")["results"]["path"])
    items = derived_collection(results, "clusters-k3", sample_results)
    assert sorted(item["id"] for item in items) == SAMPLE_IDS
    maps = {}
    for item in items:
        assert set(item["assets"]) == {"classes", "labels"}
        with rasterio.open(results / "clusters-k3" / item["id"] / item["assets"]["classes"]["href"]) as ds:
            assert (ds.count, ds.dtypes[0], ds.nodata) == (1, "uint8", 255)
            assert (ds.crs, ds.transform, ds.shape) == embeddings_grid(results, item["id"])
            assert ds.colormap(1)[0][3] == 255
            maps[item["id"]] = ds.read(1)
        assert set(np.unique(maps[item["id"]])) <= {0, 1, 2}
    assert len(set(np.unique(np.concatenate([m.ravel() for m in maps.values()])))) == 3
    assert (results / "clusters-k3" / "centroids.parquet").is_file()

    job = write_job(tmp_path / "apply.yml", {"embeddings": directory(sample_results),
                                              "centroids_dir": directory(results), "output_collection": "applied"})
    applied = Path(cwltool(CWL / "stacembed-cluster.cwl", job, cwd=tmp_path / "apply")["results"]["path"])
    for item in derived_collection(applied, "applied", sample_results):
        with rasterio.open(applied / "applied" / item["id"] / item["assets"]["classes"]["href"]) as ds:
            assert np.array_equal(ds.read(1), maps[item["id"]])


def test_change_tool_with_one_item_before_and_after(sample_results, tmp_path):
    """An item compared with itself: one change map on its chip grid, all zeros."""
    import numpy as np

    item_id = SAMPLE_IDS[2]
    job = write_job(tmp_path / "job.yml", {"embeddings": directory(sample_results),
                                            "before": item_id, "after": item_id})
    results = Path(cwltool(CWL / "stacembed-change.cwl", job, cwd=tmp_path)["results"]["path"])
    (item,) = derived_collection(results, "change", sample_results)
    assert item["id"] == f"{item_id}--{item_id}"
    assert item["properties"]["stacembed:change"]["before"] == item["properties"]["stacembed:change"]["after"]
    with rasterio.open(results / "change" / item["id"] / item["assets"]["change"]["href"]) as ds:
        assert (ds.count, ds.dtypes[0]) == (1, "float32")
        assert (ds.crs, ds.transform, ds.shape) == embeddings_grid(results, item_id)
        distances = ds.read(1)
    assert distances.size and np.all(distances == 0)
