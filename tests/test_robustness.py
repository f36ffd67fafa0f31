"""Bad input is one line and a non-zero exit, never a traceback (issue 15, item 9), and a run
prints nothing it does not mean to (item 16: torch's "NumPy array is not writable" warning)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pystac
import pytest
import rasterio
import torch
from conftest import SAMPLE
from numpy.lib.stride_tricks import sliding_window_view
from range_http import serve
from test_errors import assert_clean_failure, run_cli

from stacembed.bands import BandSource
from stacembed.embed import Embedder
from stacembed.errors import ReadError
from stacembed.grid import read_grid, read_header
from stacembed.models import resolve_card
from stacembed.readers import open_reader

# --- a truncated COG: the header reads, a tile does not ---------------------------------------


def _truncate_tiles(tif):
    """Cut the end of a COG's tile data; its header (at the start of a COG) still reads."""
    data = tif.read_bytes()
    tif.write_bytes(data[: len(data) - len(data) // 4])
    read_header.cache_clear()


@pytest.fixture
def truncated(synthetic_catalog):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(100, 130))
    tif = catalog.parent / "synthetic" / "item-0" / "B3.tif"
    _truncate_tiles(tif)
    read_grid(str(tif))  # the header is intact: the failure comes while reading windows
    return catalog, tif


@pytest.mark.parametrize("loader", ["auto", "stackstac", "odc"])
def test_a_truncated_cog_is_one_line_naming_the_file(truncated, tmp_path, loader):
    catalog, tif = truncated
    out = tmp_path / "out"
    result = run_cli("run", "--catalog", catalog, "--out", out, "--loader", loader)
    assert_clean_failure(result, out, f"cannot read raster {tif}: ")
    assert "TIFF" in result.stderr  # GDAL's own reason, not "See previous exception"


@pytest.mark.parametrize("loader", ["auto", "stackstac", "odc"])
def test_reader_turns_gdal_errors_into_a_read_error(truncated, loader):
    _, tif = truncated
    grid = read_grid(str(tif))
    reader = _reader(_item(grid), tif, grid, loader)
    with pytest.raises(ReadError, match=f"cannot read raster {tif}: .*TIFF") as caught:
        reader.read(slice(0, grid.height), slice(0, grid.width))
    assert "\n" not in str(caught.value)


def test_header_and_read_errors_name_signed_urls_without_their_secrets(tmp_path):
    tif = tmp_path / "B3.tif"
    source = SAMPLE.parent / "landsat-etm-sample" / "L7-olinda-r0c0" / "red.tif"
    tif.write_bytes(source.read_bytes())
    _truncate_tiles(tif)
    # No directory listing (this server has none), and a timeout in case of a hang.
    with serve(tmp_path) as (base, _), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_TIMEOUT="20"):
        signed = f"{base}/B3.tif?sv=2024&sig=TOPSECRET"
        grid = read_grid(signed)
        reader = _reader(_item(grid), signed, grid, "auto")
        with pytest.raises(ReadError) as caught:
            reader.read(slice(0, grid.height), slice(0, grid.width))
        reader.close()
        missing = f"{base}/missing.tif?sig=TOPSECRET"
        with pytest.raises(ReadError) as header:
            read_grid(missing)
    for message in (str(caught.value), str(header.value)):
        assert "TOPSECRET" not in message and "sig=" in message, message  # the URL, its secret masked
        assert message.startswith("cannot read raster http://127.0.0.1:"), message


def _item(grid):
    """An item whose footprint is the grid's (odc-stac reads only items that meet the grid)."""
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    west, south, east, north = grid.bounds
    ring = [list(to_lonlat.transform(x, y)) for x, y in
            [(west, south), (east, south), (east, north), (west, north), (west, south)]]
    bbox = [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)]
    return pystac.Item("item-0", {"type": "Polygon", "coordinates": [ring]}, bbox,
                       pystac.utils.str_to_datetime("2024-01-15T00:00:00Z"), {})


def _reader(item, href, grid, loader):
    return open_reader([(item, [BandSource("red", "B3", str(href))])], grid, grid, loader=loader)


# --- an item id too long for a file name -------------------------------------------------------


def test_an_item_id_longer_than_a_file_name_can_be(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    long_id = "S2B_MSIL2A_" + "x" * 250
    item_file = catalog.parent / "synthetic" / "item-0" / "item-0.json"
    item = json.loads(item_file.read_text())
    item["id"] = long_id
    item_file.write_text(json.dumps(item))
    out = tmp_path / "out"
    result = run_cli("run", "--catalog", catalog, "--out", out, "-q")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    written = [json.loads(p.read_text()) for p in out.glob("*/*/*.json") if p.parent.name != "model"]
    assert [i["id"] for i in written] == [long_id]
    assert all(len(p.name.encode()) <= 255 for p in out.rglob("*"))
    again = run_cli("run", "--catalog", catalog, "--out", out, "-q")  # resumes: finds what it wrote
    assert again.returncode == 0 and again.stderr == "", again.stderr


# --- item 16: no "NumPy array is not writable" warning ----------------------------------------

# torch warns once per process, so each check runs in a fresh interpreter: in this one, any
# earlier test may have used up the warning.
_RUN_WITH_WARNINGS = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    from stacembed import RunConfig, run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(RunConfig(out=Path(sys.argv[1]), catalog=sys.argv[2], chip_size=int(sys.argv[3]), progress=False))
    print(json.dumps([f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]))
""")


@pytest.mark.parametrize("chip_size", [64, 192])
def test_a_run_emits_no_user_warning(tmp_path, chip_size):
    """192 px chips cover a whole sample item: each batch is one chip, a read-only C-contiguous
    view of the padded read (``chips._read_run``), which ``torch.from_numpy`` warned about."""
    result = subprocess.run([sys.executable, "-c", _RUN_WITH_WARNINGS, str(tmp_path / "out"), str(SAMPLE),
                             str(chip_size)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert "not writable" not in result.stderr


def test_a_quiet_run_prints_nothing(tmp_path):
    result = run_cli("run", "--catalog", SAMPLE, "--chip-size", 192, "--out", tmp_path / "out", "-q")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


def _torch_cpu_bytes(events) -> int:
    return sum(max(e.self_cpu_memory_usage, 0) for e in events)


@pytest.fixture(scope="module")
def embedder():
    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    embedder.channels_last = False  # the NHWC conversion is a second, deliberate pass
    return embedder


def _batches():
    rng = np.random.default_rng(3)
    wide = rng.normal(0.2, 0.05, (6, 64, 64 * 4)).astype("float32")
    one = rng.normal(0.2, 0.05, (6, 64, 64)).astype("float32")
    view = np.moveaxis(sliding_window_view(wide, 64, axis=-1)[..., ::64, :], -2, 0)  # strided, read-only
    single = np.moveaxis(sliding_window_view(one, 64, axis=-1)[..., ::64, :], -2, 0)  # contiguous, read-only
    assert single.flags.c_contiguous and not single.flags.writeable and not view.flags.writeable
    plain = np.ascontiguousarray(view)
    return {"strided view": view, "read-only contiguous": single, "writable contiguous": plain,
            "float64": plain.astype("float64")}


@pytest.mark.parametrize("kind", sorted(_batches()))
def test_preprocess_copies_a_batch_exactly_once_and_leaves_it_alone(embedder, kind):
    """Bytes allocated by numpy (traced) and torch (profiled) during ``preprocess``: one float32
    batch (plus a few kB of bookkeeping; a second copy would be 2x), whatever the batch is, and
    the result never shares memory with it."""
    pixels = _batches()[kind]
    pixels_before = pixels.copy()
    size = pixels.size * 4
    tracemalloc.start()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        x = embedder.preprocess(pixels)
    numpy_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    allocated = numpy_bytes + _torch_cpu_bytes(prof.events())
    assert size <= allocated < 1.5 * size, (kind, allocated / size)
    assert not np.may_share_memory(x.numpy(), pixels)
    np.testing.assert_array_equal(pixels, pixels_before)
    np.testing.assert_array_equal(x.numpy(), np.nan_to_num(embedder.scaling.apply_(
        torch.from_numpy(np.array(pixels, dtype="float32"))).numpy(), nan=0.0))


def test_a_crs_the_area_cannot_be_projected_to_is_one_line(tmp_path):
    """GDAL fails to compute the target grid (every point of the area is on the far side of the
    globe): an error about --crs, not a CPLE_AppDefinedError traceback."""
    out = tmp_path / "out"
    result = run_cli("run", "--catalog", SAMPLE, "--crs", "+proj=ortho +lat_0=90 +lon_0=0", "--out", out)
    assert_clean_failure(result, out, "cannot reproject the item's grid")
