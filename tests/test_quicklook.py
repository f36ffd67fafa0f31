"""Quicklooks: a PCA -> RGB picture of each item's embeddings (PNG thumbnail, RGBA COG overview).

Expected colours and the PCA basis are computed here with numpy alone (matrix products and
``np.linalg.svd``), never with stacembed's or scikit-learn's code.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pystac
import pytest
import rasterio
from conftest import make_catalog, make_item
from PIL import Image
from stac_validation import validate_tree

from stacembed import RunConfig, open_embeddings, run
from stacembed.analysis.quicklook import (
    BASIS_KEY,
    THUMBNAIL_MAX,
    QuicklookBasis,
    sample_vectors,
    thumbnail,
    write_quicklooks,
)

SAMPLE_IDS = [f"L7-olinda-r{r}c{c}" for r in (0, 1) for c in (0, 1)]
# 32 px chips on the sample's 174-176 px items: 6 x 6 chips, the edge ones partly outside the
# raster; --min-valid 0.9 skips those, so every picture has transparent chips.
BASE = {"weights": "random", "chip_size": 32, "min_valid": 0.9, "progress": False}


def _run(out: Path, **options) -> Path:
    run(RunConfig.from_mapping({"out": str(out), **BASE, **options}))
    return out


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ql") / "out")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ql-int8") / "out", dtype="int8")


def collection_dir(out: Path) -> Path:
    (path,) = out.glob("*/collection.json")
    return path.parent


def item_json(out: Path, item_id: str) -> dict:
    return json.loads((collection_dir(out) / item_id / f"{item_id}.json").read_text())


def overview(out: Path, item_id: str):
    """(rgba (H, W, 4), facts of the file) of an item's overview COG."""
    path = collection_dir(out) / item_id / f"{item_id}.overview.tif"
    with rasterio.open(path) as ds:
        facts = SimpleNamespace(crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height,
                                count=ds.count, dtypes=ds.dtypes, colorinterp=ds.colorinterp,
                                structure=ds.tags(ns="IMAGE_STRUCTURE"), mask=ds.dataset_mask())
        return np.moveaxis(ds.read(), 0, 2), facts


def png(out: Path, item_id: str) -> Image.Image:
    image = Image.open(collection_dir(out) / item_id / f"{item_id}.thumbnail.png")
    image.load()
    return image


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def quicklook_files(out: Path) -> list[Path]:
    return sorted([*out.glob("*/*/*.thumbnail.png"), *out.glob("*/*/*.overview.tif")])


def stored_basis(out: Path) -> dict:
    return json.loads((collection_dir(out) / "collection.json").read_text())[BASIS_KEY]


def stacembed(*args):
    from click.testing import CliRunner

    from stacembed.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# --- what a run writes ----------------------------------------------------------------------------

def test_run_writes_a_png_and_a_cog_per_item_on_the_embeddings_grid(float_run):
    for item_id in SAMPLE_IDS:
        rgba, ds = overview(float_run, item_id)
        with rasterio.open(collection_dir(float_run) / item_id / f"{item_id}.tif") as emb:
            assert (ds.crs, ds.transform, ds.width, ds.height) == (emb.crs, emb.transform, emb.width, emb.height)
            no_chip = np.isnan(emb.read()).all(axis=0)
        assert ds.count == 4 and ds.dtypes == ("uint8",) * 4
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
        assert [c.name for c in ds.colorinterp[:3]] == ["red", "green", "blue"]
        assert ds.structure["LAYOUT"] == "COG"
        assert no_chip.any() and not no_chip.all()  # --min-valid 0.9 skipped the edge chips
        np.testing.assert_array_equal(rgba[..., 3], np.where(no_chip, 0, 255))
        assert (rgba[no_chip, :3] == 0).all()
        np.testing.assert_array_equal(ds.mask, rgba[..., 3])  # GDAL's mask is the alpha band
        thumb = png(float_run, item_id)
        assert thumb.mode == "RGBA" and thumb.size == (ds.width, ds.height)  # one pixel per chip
        np.testing.assert_array_equal(np.asarray(thumb), rgba)


def test_items_name_the_quicklooks_and_the_collection_declares_them(float_run):
    for item_id in SAMPLE_IDS:
        item = item_json(float_run, item_id)
        thumb, cog = item["assets"]["thumbnail"], item["assets"]["overview"]
        assert thumb["type"] == "image/png" and thumb["roles"] == ["thumbnail", "overview"]
        assert cog["type"].startswith("image/tiff; application=geotiff") and cog["roles"] == ["overview", "visual"]
        assert cog["proj:shape"] == item["assets"]["embeddings-geotiff"]["proj:shape"]
        assert cog["proj:transform"] == item["assets"]["embeddings-geotiff"]["proj:transform"]
        assert cog["proj:code"] == item["assets"]["embeddings-geotiff"]["proj:code"]
        for asset in (thumb, cog):
            path = collection_dir(float_run) / item_id / asset["href"]
            assert asset["file:size"] == path.stat().st_size
            import hashlib

            assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
    collection = json.loads((collection_dir(float_run) / "collection.json").read_text())
    assert collection["item_assets"]["thumbnail"]["roles"] == ["thumbnail", "overview"]
    assert collection["item_assets"]["overview"]["roles"] == ["overview", "visual"]
    assert not {path: errors for path, errors in validate_tree(float_run).items() if errors}
    result = stacembed("validate", float_run)
    assert result.exit_code == 0, result.output
    assert "7 STAC documents valid" in result.output
    # the stac-geoparquet mirror holds the items as written, quicklooks included
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow

    mirrored = stac_geoparquet.arrow.stac_table_to_items(pq.read_table(collection_dir(float_run) / "items.parquet"))
    assert all({"thumbnail", "overview"} <= set(item["assets"]) for item in mirrored)


def test_colours_are_the_collection_basis_applied_to_each_vector(float_run):
    basis = stored_basis(float_run)
    mean = np.array(basis["mean"])
    components = np.array(basis["components"])
    low, high = np.array(basis["stretch"]["low"]), np.array(basis["stretch"]["high"])
    assert components.shape == (3, 96) and basis["sample"]["seed"] == 0
    for item in open_embeddings(float_run):
        table = item.table(columns=["chip_row", "chip_col"])
        rows, cols = table["chip_row"].to_numpy(), table["chip_col"].to_numpy()
        projected = (item.vectors().astype(np.float64) - mean) @ components.T
        expected = np.rint(np.clip((projected - low) / (high - low), 0, 1) * 255)
        rgba, _ = overview(float_run, item.id)
        assert np.abs(rgba[rows, cols, :3].astype(int) - expected).max() <= 1  # rounding at .5 only


def test_identical_vectors_get_identical_colours_in_every_item(tmp_path):
    # item-a and item-b hold the same pixels at two places (so the same vectors); item-c others
    root = tmp_path / "stac"
    items = [make_item(root, item_id, dialect="1.1", origin=(500000.0 + i * 5000, 9100000.0), shape=(64, 96),
                       seed=seed) for i, (item_id, seed) in enumerate((("item-a", 1), ("item-b", 1), ("item-c", 2)))]
    catalog = make_catalog(root, items)
    out = _run(tmp_path / "out", catalog=str(catalog), chip_size=16, min_valid=0.5)
    emb = open_embeddings(out)
    np.testing.assert_array_equal(emb["item-a"].vectors(), emb["item-b"].vectors())
    a, b, c = (np.asarray(png(out, i)) for i in ("item-a", "item-b", "item-c"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert stored_basis(out)["sample"]["size"] == 3 * 4 * 6  # one basis, fitted on every item's chips


# --- reruns and the command -----------------------------------------------------------------------

def test_rerun_that_changes_nothing_writes_nothing(float_run):
    before = {p: p.stat().st_mtime_ns for p in float_run.rglob("*") if p.is_file()}
    _run(float_run)
    after = {p: p.stat().st_mtime_ns for p in float_run.rglob("*") if p.is_file()}
    assert after == before


def test_rerun_adding_items_keeps_the_basis_and_the_finished_items(tmp_path):
    first = _run(tmp_path / "out", max_items=1)
    (done,) = [p for p in first.glob("*/*/*") if p.is_file() and p.parent.name != "model"
               and p.name.startswith(SAMPLE_IDS[0]) and p.suffix == ".json"]
    stamp, basis = done.stat().st_mtime_ns, stored_basis(first)
    _run(first)
    assert done.stat().st_mtime_ns == stamp
    assert stored_basis(first) == basis
    assert all((collection_dir(first) / i / f"{i}.thumbnail.png").is_file() for i in SAMPLE_IDS)


def test_quicklook_command_recreates_deleted_quicklooks_byte_for_byte(float_run, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(float_run, copy)
    written = files(copy)
    for path in quicklook_files(copy):
        path.unlink()
    result = stacembed("quicklook", copy)
    assert result.exit_code == 0, result.output
    assert "quicklooks of 4 item(s) drawn, 0 up to date" in result.output
    assert files(copy) == written
    # a catalog written before quicklooks existed: no files, no assets, no basis; fitted again
    for path in quicklook_files(copy):
        path.unlink()
    for item_file in copy.glob("*/*/*.json"):
        if item_file.parent.name != "model":
            item = json.loads(item_file.read_text())
            del item["assets"]["thumbnail"], item["assets"]["overview"]
            item_file.write_text(json.dumps(item))
    collection_file = collection_dir(copy) / "collection.json"
    collection = json.loads(collection_file.read_text())
    del collection[BASIS_KEY], collection["item_assets"]["thumbnail"], collection["item_assets"]["overview"]
    collection_file.write_text(json.dumps(collection))
    result = stacembed("quicklook", copy / "catalog.json")
    assert result.exit_code == 0, result.output
    assert files(copy) == written
    # refitting reproduces the basis bit for bit, so nothing is redrawn
    result = stacembed("quicklook", collection_file, "--refit")
    assert "quicklooks of 0 item(s) drawn, 4 up to date" in result.output
    assert files(copy) == written


def test_quicklook_command_leaves_derived_collections_alone(float_run, tmp_path):
    """A --out that also holds a product derived from the embeddings (here clusters, written
    into the same --out) is redrawn as before: the derived collection has no embeddings to draw."""
    copy = tmp_path / "out"
    shutil.copytree(float_run, copy)
    assert stacembed("cluster", copy, "--k", 2, "--out", copy).exit_code == 0
    before = files(copy)
    result = stacembed("quicklook", copy)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{collection_dir_name(copy)}: quicklooks of 0 item(s) drawn, 4 up to date"]
    assert files(copy) == before


def collection_dir_name(out: Path) -> str:
    return next(p.parent.name for p in out.glob("*/collection.json") if p.parent.name != "clusters-k2")


def test_quicklook_command_with_another_sample_redraws(float_run, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(float_run, copy)
    results = write_quicklooks(copy, sample=10, seed=3)
    assert [len(r.written) for r in results] == [4]
    basis = stored_basis(copy)
    assert basis["sample"] == {"size": 10, "limit": 10, "seed": 3}
    digests = {item_json(copy, i)["assets"]["overview"]["stacembed:quicklook_basis"] for i in SAMPLE_IDS}
    assert len(digests) == 1 and digests != {item_json(float_run, SAMPLE_IDS[0])["assets"]["overview"]
                                             ["stacembed:quicklook_basis"]}
    assert stacembed("validate", copy).exit_code == 0


# --- storage types, formats, dense ------------------------------------------------------------------

def test_int8_and_float32_give_nearly_the_same_picture(float_run, int8_run):
    for item_id in SAMPLE_IDS:
        exact, _ = overview(float_run, item_id)
        quantized, _ = overview(int8_run, item_id)
        np.testing.assert_array_equal(exact[..., 3], quantized[..., 3])
        difference = np.abs(exact[..., :3].astype(int) - quantized[..., :3].astype(int))[exact[..., 3] > 0]
        assert difference.mean() < 1 and difference.max() <= 6, (difference.mean(), difference.max())


def test_geoparquet_only_items_are_drawn_on_the_same_grid(float_run, tmp_path):
    out = _run(tmp_path / "out", formats=["geoparquet"])
    assert stored_basis(out) == stored_basis(float_run)  # the same sample, read from the other format
    for item_id in SAMPLE_IDS:
        rgba, ds = overview(out, item_id)
        reference, ref = overview(float_run, item_id)
        assert ds.crs == ref.crs
        np.testing.assert_allclose(list(ds.transform), list(ref.transform), rtol=0, atol=1e-6)
        # drawn up to the last kept chip row and column; the same pixels there
        np.testing.assert_array_equal(rgba, reference[: ds.height, : ds.width])
        assert not reference[ds.height:, :, 3].any() and not reference[:, ds.width:, 3].any()
    assert stacembed("validate", out).exit_code == 0


def test_dense_embeddings_get_one_pixel_per_patch(tmp_path):
    out = _run(tmp_path / "out", pooling="none", formats=["geotiff"], chip_size=64, min_valid=0.5)
    for item_id in SAMPLE_IDS:
        rgba, ds = overview(out, item_id)
        with rasterio.open(collection_dir(out) / item_id / f"{item_id}.tif") as emb:
            assert (ds.transform, ds.width, ds.height, ds.crs) == (emb.transform, emb.width, emb.height, emb.crs)
            assert emb.width > 3  # patches, not chips (3 x 3 chips of 64 px)
            np.testing.assert_array_equal(rgba[..., 3] == 0, np.isnan(emb.read()).all(axis=0))
        item = item_json(out, item_id)
        assert "one pixel per patch" in item["assets"]["thumbnail"]["title"]
        assert png(out, item_id).size == (ds.width, ds.height)
    assert stacembed("validate", out).exit_code == 0


def test_item_without_a_chip_gets_no_quicklook(tmp_path, caplog):
    root = tmp_path / "stac"
    items = [make_item(root, "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(64, 64), seed=1),
             make_item(root, "item-1", dialect="1.1", origin=(505000.0, 9100000.0), shape=(64, 64), seed=2,
                       nodata=0, nodata_rows=64)]
    catalog = make_catalog(root, items)
    with caplog.at_level(logging.INFO, logger="stacembed"):
        out = _run(tmp_path / "out", catalog=str(catalog), chip_size=16, min_valid=0.5)
    assert "item item-1 kept no chip: no quicklook" in caplog.text
    assert {"thumbnail", "overview"} <= set(item_json(out, "item-0")["assets"])
    assert not {"thumbnail", "overview"} & set(item_json(out, "item-1")["assets"])
    assert stacembed("validate", out).exit_code == 0


# --- the basis ------------------------------------------------------------------------------------

def test_basis_is_a_pca_of_the_sample(float_run):
    items = list(open_embeddings(float_run))
    sample = sample_vectors(items)
    assert sample.shape == (sum(len(i.vectors()) for i in items), 96)  # fewer chips than the limit: all
    basis = stored_basis(float_run)
    data = sample.astype(np.float64)
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    components = np.array(basis["components"])
    np.testing.assert_allclose(basis["mean"], mean, rtol=0, atol=1e-6)
    for mine, reference in zip(components, vt[:3], strict=True):
        sign = np.sign(mine @ reference)
        np.testing.assert_allclose(mine, sign * reference, rtol=0, atol=1e-6)
    ratio = singular**2 / (singular**2).sum()
    np.testing.assert_allclose(basis["explained_variance_ratio"], ratio[:3], rtol=1e-6)
    projected = (data - mean) @ components.T
    low, high = np.percentile(projected, [2, 98], axis=0)
    np.testing.assert_allclose(basis["stretch"]["low"], low, rtol=0, atol=1e-9)
    np.testing.assert_allclose(basis["stretch"]["high"], high, rtol=0, atol=1e-9)
    # the stored basis reads back exactly
    assert QuicklookBasis.from_stac(basis).to_stac() == basis


def test_sample_is_bounded_seeded_and_independent_of_item_order(float_run):
    items = list(open_embeddings(float_run))
    every = np.concatenate([i.vectors() for i in items])
    small = sample_vectors(items, sample=10, seed=1)
    assert small.shape == (10, 96)
    np.testing.assert_array_equal(small, sample_vectors(items[::-1], sample=10, seed=1))
    assert not np.array_equal(small, sample_vectors(items, sample=10, seed=2))
    assert all((every == row).all(axis=1).any() for row in small)  # drawn from the chips, unchanged
    assert len({row.tobytes() for row in small}) == 10  # without replacement
    # the reservoir is compacted along the way (sample smaller than a batch): still the same draw
    np.testing.assert_array_equal(sample_vectors(items, sample=3, seed=1), small[:3])


def test_colour_of_a_vector_does_not_depend_on_its_batch():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 64)).astype(np.float32)
    from stacembed.analysis.quicklook import basis_from_sample

    basis = basis_from_sample(vectors)
    whole = basis.project(vectors)
    one_by_one = np.concatenate([basis.project(vectors[i:i + 1]) for i in range(len(vectors))])
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(basis.project(vectors[::-1])[::-1], whole)


def test_thumbnail_is_capped_by_nearest_neighbour():
    height, width = 3000, 1500
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = (np.arange(height) % 256)[:, None]
    rgba[..., 1] = (np.arange(width) % 256)[None, :]
    small = thumbnail(rgba)
    assert small.shape == (THUMBNAIL_MAX, THUMBNAIL_MAX // 2, 4)
    rows = ((np.arange(THUMBNAIL_MAX) + 0.5) * height / THUMBNAIL_MAX).astype(int)
    np.testing.assert_array_equal(small[:, 0, 0], rows % 256)
    assert thumbnail(rgba[:1024, :700]) is not None and thumbnail(rgba[:1024, :700]).shape == (1024, 700, 4)


def test_cog_is_read_in_whole_tiles_of_bounded_size(tmp_path, monkeypatch):
    from affine import Affine

    import stacembed.analysis.quicklook as quicklook
    from stacembed.embeddings import EmbeddingItem

    rng = np.random.default_rng(5)
    values = rng.normal(size=(8, 40, 50)).astype(np.float32)
    values[:, 3:7, 10:20] = np.nan  # no chip there
    path = tmp_path / "e.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=8, dtype="float32", crs="EPSG:32725",
                       transform=Affine(30, 0, 500000, 0, -30, 9100000), tiled=True, blockxsize=16, blockysize=16,
                       nodata=float("nan")) as ds:
        ds.write(values)
    item = pystac.Item("e", None, None, datetime(2024, 1, 1), {})
    item.add_asset("embeddings", pystac.Asset(str(path), media_type=pystac.MediaType.COG))
    reader = EmbeddingItem.from_stac(item)

    def chips():
        found = {}
        for rows, cols, vectors in quicklook._kept_chips(reader):
            for row, col, vector in zip(rows, cols, vectors, strict=True):
                assert (row, col) not in found  # every pixel once
                found[row, col] = vector
        return found

    expected = {(r, c): values[:, r, c] for r in range(40) for c in range(50) if not np.isnan(values[0, r, c])}
    for budget in (16 * 2**20, 16 * 50 * 8 * 4, 1):  # whole file, one strip of tile rows, single tiles
        monkeypatch.setattr(quicklook, "STRIP_BYTES", budget)
        windows = [window for window, _ in quicklook._blocks(reader)]
        assert all(w.row_off % 16 == 0 and w.col_off % 16 == 0 for w in windows)
        found = chips()
        assert found.keys() == expected.keys()
        assert all(np.array_equal(found[key], expected[key]) for key in expected)
    assert len(windows) == 3 * 4


@pytest.mark.parametrize(("n", "dims"), [(500, 12), (12, 40), (3, 3)])
def test_principal_axes_equal_an_svd_of_the_centred_sample(n, dims):
    """More vectors than dimensions (from the scatter matrix) and fewer (from an SVD): the axes
    and variance shares of an SVD of the centred sample, signed as scikit-learn signs them."""
    from stacembed.analysis.quicklook import _principal_axes

    rng = np.random.default_rng(n)
    vectors = (rng.standard_normal((n, dims)) * np.linspace(3, 0.5, dims) + 7).astype(np.float32)  # distinct variances
    data = vectors.astype(np.float64)
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    axes, shares = _principal_axes(vectors, mean, 3)
    for mine, reference in zip(axes, vt[:3], strict=True):
        assert mine[np.abs(mine).argmax()] > 0
        np.testing.assert_allclose(mine, np.sign(mine @ reference) * reference, rtol=0, atol=1e-9)
    np.testing.assert_allclose(shares, (singular**2 / (singular**2).sum())[:3], rtol=1e-9, atol=1e-12)
