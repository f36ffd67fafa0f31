"""The inference engine: background prefetching, precision, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import torch
import xarray as xr
from conftest import DEMO_CARD

from stacembed import RunConfig, run
from stacembed.access import DEFAULT_CACHE_BYTES
from stacembed.bands import BandSource
from stacembed.chips import ChipGrid
from stacembed.concurrency import ordered_map, prefetch
from stacembed.embed import (
    MAX_STREAMS,
    Embedder,
    configure_threads,
    default_prefetch,
    default_streams,
    prefers_channels_last,
    usable_cores,
)
from stacembed.errors import ConfigError
from stacembed.feed import AHEAD_BYTES, FeedSpec
from stacembed.grid import Grid, read_grid
from stacembed.models import resolve_card
from stacembed.readers import DirectReader
from stacembed.readers.stack import StackReader


def test_prefetch_keeps_order_and_reads_ahead_a_bounded_number():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    consumed = []
    for item in prefetch(source(), depth=2):
        time.sleep(0.01)  # the consumer is the slow side: the producer must wait, not run away
        assert len(produced) - len(consumed) <= 2 + 2  # queued + one in hand + one being put
        consumed.append(item)
    assert consumed == list(range(20))


def test_prefetch_reraises_errors_and_stops_when_the_consumer_stops():
    def failing():
        yield 1
        raise ValueError("corrupt block")

    with pytest.raises(ValueError, match="corrupt block"):
        list(prefetch(failing()))

    started = threading.active_count()
    endless = prefetch(iter(range(10**9)), depth=1)
    assert next(endless) == 0
    endless.close()  # e.g. the model failed: the reader thread must end, not read forever
    time.sleep(0.3)
    assert threading.active_count() <= started
    assert list(prefetch([1, 2, 3], depth=0)) == [1, 2, 3]


@pytest.mark.parametrize("ahead", [1, 4])
def test_ordered_map_runs_items_side_by_side_in_order_with_a_bounded_number_in_flight(ahead):
    both_running = threading.Barrier(2, timeout=5)  # passes only if two calls run at the same time
    pulled, finished = [], []

    def source():
        for i in range(12):
            pulled.append(i)
            yield i

    def work(i):
        if i < 2:
            both_running.wait()
        time.sleep(0.01 * (i % 3 == 0))  # finish out of order
        finished.append(i)
        return i * i

    results, most = [], 0
    for value in ordered_map(work, source(), workers=2, ahead=ahead):
        most = max(most, len(pulled) - len(results))  # submitted and not yet yielded
        results.append(value)
    assert results == [i * i for i in range(12)]
    assert most == 2 + ahead  # the workers' items and ``ahead`` queued, never more
    assert list(ordered_map(lambda i: -i, [1, 2], workers=1)) == [-1, -2]


def test_ordered_map_raises_at_the_failing_item_and_cleans_up_on_close():
    def work(i):
        if i == 3:
            raise ValueError("bad batch")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for value in ordered_map(work, range(10), workers=2):
            got.append(value)
    assert got == [0, 1, 2]  # everything before the failure, in order

    started = threading.active_count()
    endless = ordered_map(lambda i: i, iter(range(10**9)), workers=2)
    assert next(endless) == 0
    endless.close()  # the consumer stops: no thread is left running
    time.sleep(0.2)
    assert threading.active_count() <= started


def test_streams_split_the_cores_and_each_forward_pass_gets_its_share():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_streams(cpu) == min(MAX_STREAMS, usable_cores())
    assert (default_streams(cuda) == 1 and default_streams(cpu, threads=2) == 1
            and default_streams(cpu, compile=True) == 1)
    before = torch.get_num_threads()
    try:
        assert configure_threads(None, streams=2) == max(1, usable_cores() // 2)
        torch.set_num_threads(1)
        # torch's thread count reaches the stream threads: each pass runs on one thread, not on all cores.
        assert set(ordered_map(lambda _: torch.get_num_threads(), range(8), workers=2)) == {1}
        assert default_prefetch(cpu, streams=usable_cores()) == 0  # every core has a stream: read in line
    finally:
        torch.set_num_threads(before)
    card = resolve_card("stacembed-demo-landsat")
    model = torch.nn.Identity()
    with pytest.raises(ConfigError, match="--streams above 1 .* device cuda"):
        Embedder(card, model, cuda, streams=2)
    with pytest.raises(ConfigError, match="--streams above 1 .* --compile"):
        Embedder(card, model, cpu, streams=2, compile=True)


def test_concurrent_forward_passes_give_the_files_of_one_at_a_time(tmp_path):
    sample = Path(__file__).parent.parent / "catalogs" / "sample" / "catalog.json"
    tables = {}
    for streams in (1, 2):
        out = tmp_path / f"streams-{streams}"
        run(RunConfig(out=out, catalog=str(sample), streams=streams, threads=1, batch_size=3,
                      formats=("geoparquet",), progress=False))
        tables[streams] = {p.name: pq.read_table(p) for p in out.glob("*/*/*.parquet")}
    assert tables[1].keys() == tables[2].keys() and len(tables[1]) == 4
    assert all(tables[1][name].equals(tables[2][name]) for name in tables[1])


def test_bf16_autocast_on_the_cpu_is_close_to_fp32_and_fp16_needs_cuda():
    card = resolve_card("stacembed-demo-landsat")
    x = np.random.default_rng(0).normal(0.2, 0.05, (4, 6, 64, 64)).astype("float32")
    full = Embedder.from_card(card, None, torch.device("cpu"))(x)
    half = Embedder.from_card(card, None, torch.device("cpu"), precision="bf16")(x)
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert half.dtype == np.float32 and cosine.min() > 0.99
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        Embedder.from_card(card, None, torch.device("cpu"), precision="fp16")


def test_thread_setup_and_batch_size_defaults_on_the_cpu():
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert default_prefetch(torch.device("cpu")) == (2 if usable_cores() > 1 else 0)  # a core left for reads
        assert default_prefetch(torch.device("cuda")) == 2
        assert configure_threads(None) == usable_cores()  # the default reader thread is not counted
        assert default_prefetch(torch.device("cpu")) == 0  # torch on every core: read in line
        assert configure_threads(None, reader_threads=2) == max(1, usable_cores() - 2)
    finally:
        torch.set_num_threads(before)
    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    assert embedder.auto_batch_size(default=16) == 16


@pytest.mark.parametrize("name, cpu, cuda", [
    ("test_resnet", True, True),  # conv + batch norm: NHWC on both
    ("convnext_atto", False, True),  # channel LayerNorm: slower in NHWC on the CPU
    ("vit_tiny_patch16_224", False, False),  # a transformer
])
def test_memory_format_follows_the_architecture_and_device(name, cpu, cuda):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=6)
    assert prefers_channels_last(model, torch.device("cpu")) is cpu
    assert prefers_channels_last(model, torch.device("cuda")) is cuda
    assert prefers_channels_last(model, torch.device("mps")) is False


def test_channels_last_on_the_cpu_gives_the_contiguous_forward_pass():
    card = resolve_card("stacembed-demo-landsat")
    embedder = Embedder.from_card(card, None, torch.device("cpu"))
    assert embedder.channels_last
    x = np.random.default_rng(1).normal(0.2, 0.05, (5, 6, 64, 64)).astype("float32")
    x[0, :, :10, :10] = np.nan
    before = x.copy()
    got = embedder(x)
    np.testing.assert_array_equal(x, before)  # scaling and NaN filling work on the engine's own copy
    plain = Embedder.from_card(card, None, torch.device("cpu"))
    plain.channels_last = False
    plain.model = plain.model.to(memory_format=torch.contiguous_format)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, plain(x), rtol=1e-4, atol=1e-5)


def test_a_strided_view_of_a_read_is_embedded_like_its_copy_and_left_as_it_was():
    """Batches can be views of the pixels read (chips.read_batches); the engine's one copy
    (here the gather that makes them contiguous) must leave the read untouched."""
    from numpy.lib.stride_tricks import sliding_window_view

    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    block = np.random.default_rng(2).normal(0.2, 0.05, (6, 64, 64 * 5)).astype("float32")
    block[:, :8, :8] = np.nan
    view = np.moveaxis(sliding_window_view(block, 64, axis=-1)[..., ::64, :], -2, 0)
    assert view.shape == (5, 6, 64, 64) and not view.flags.c_contiguous
    before = block.copy()
    got = embedder(view)
    np.testing.assert_array_equal(block, before)
    np.testing.assert_array_equal(got, embedder(np.ascontiguousarray(view)))


def test_integer_pixels_are_embedded_like_their_float32_measurements():
    """Readers hand over integer blocks where no pixel can lack data (``readers.direct``); the
    engine's copy makes them float32: bit for bit what float32 measurements of them give."""
    from numpy.lib.stride_tricks import sliding_window_view

    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    block = np.random.default_rng(3).integers(0, 256, (6, 64, 64 * 3)).astype("uint8")
    view = np.moveaxis(sliding_window_view(block, 64, axis=-1)[..., ::64, :], -2, 0)
    np.testing.assert_array_equal(embedder(view), embedder(np.ascontiguousarray(view, dtype="float32")))


def test_integer_pixels_skip_the_nan_pass_only_where_scaling_keeps_them_finite():
    """No NaN pass over integer pixels (they hold none) unless the card's scaling can make one:
    a zero stddev turns 0/0 into NaN, which still enters the model as 0."""
    from stacembed.models.scaling import ValueScaling

    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    assert embedder.scaling is not None and embedder.scaling.finite
    embedder.scaling = ValueScaling.from_card([{"type": "z-score", "mean": 1.0, "stddev": 0.0}], 6)
    assert not embedder.scaling.finite
    x = embedder.preprocess(np.ones((1, 6, 64, 64), "uint8"))
    assert torch.equal(x, torch.zeros_like(x))


def test_reading_ahead_or_in_line_gives_the_same_files(tmp_path):
    sample = Path(__file__).parent.parent / "catalogs" / "sample" / "catalog.json"
    tables = {}
    for depth in (0, 2):
        out = tmp_path / f"prefetch-{depth}"
        run(RunConfig(out=out, catalog=str(sample), prefetch=depth, threads=1, formats=("geoparquet",), progress=False))
        tables[depth] = {p.name: pq.read_table(p) for p in out.glob("*/*/*.parquet")}
    assert tables[0].keys() == tables[2].keys() and len(tables[0]) == 4
    assert all(tables[0][name].equals(tables[2][name]) for name in tables[0])


def test_batches_queued_ahead_fit_a_fixed_number_of_bytes_whatever_the_area():
    href = str(Path(__file__).parent.parent / "catalogs/sample/landsat-etm-sample/L7-olinda-r0c0/blue.tif")
    item = pystac.Item("x", None, None, datetime=datetime(2000, 1, 1, tzinfo=UTC), properties={})
    bands = [BandSource(name, name, href) for name in ("a", "b", "c", "d", "e", "f")]
    grid = read_grid(href)

    def spec(batch_size, size=64, times=1, area=1):
        wide = Grid(grid.crs, grid.transform, grid.width * area, grid.height * area)
        return FeedSpec([(item, bands)] * times, ChipGrid(wide, size, size), wide, batch_size, 0.5)

    assert spec(16).batch_bytes == 16 * 6 * 64 * 64 * 4 and spec(16, times=3).batch_bytes == 3 * spec(16).batch_bytes
    assert spec(16).ahead == AHEAD_BYTES // spec(16).batch_bytes == 21
    assert spec(16, area=100).ahead == spec(16).ahead
    assert spec(1024, size=224).ahead == 1  # a GPU-sized batch: one queued


def test_gdal_block_cache_holds_two_tile_rows_and_follows_the_user(monkeypatch):
    class Wide:  # a 100,000 px wide item of 512 px uint16 tiles in 12 bands
        tile_row_bytes = 12 * 196 * 512 * 512 * 2

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert FeedSpec.cache_bytes(Wide()) == 2 * Wide.tile_row_bytes
    lazy = StackReader(xr.DataArray(np.zeros((1, 1, 1))))
    assert FeedSpec.cache_bytes(lazy) == DEFAULT_CACHE_BYTES  # a lazy stack: the floor
    monkeypatch.setenv("GDAL_CACHEMAX", "300MB")
    assert FeedSpec.cache_bytes(Wide()) == 300 * 2**20

    href = str(Path(__file__).parent.parent / "catalogs/sample/landsat-etm-sample/L7-olinda-r0c0/blue.tif")
    with rasterio.open(href) as ds:
        (block_h, block_w), width, size = ds.block_shapes[0], ds.width, np.dtype(ds.dtypes[0]).itemsize
    item = pystac.Item("x", None, None, datetime=datetime(2000, 1, 1, tzinfo=UTC), properties={})
    data = DirectReader([(item, [BandSource("blue", "blue", href), BandSource("b", "b", href)])], read_grid(href))
    assert data.tile_row_bytes == 2 * -(-width // block_w) * block_w * block_h * size
    data.close()


IMPORT_AHEAD = """
import sys
from stacembed import RunConfig, run
from stacembed.writers.geoparquet import GeoParquetWriter

seen = []
write, close = GeoParquetWriter.write, GeoParquetWriter.close
GeoParquetWriter.write = lambda *a: (seen.append(("write", "stac_geoparquet" in sys.modules)), write(*a))[1]
GeoParquetWriter.close = lambda *a: (seen.append(("close", "stac_geoparquet" in sys.modules)), close(*a))[1]
run(RunConfig(model=sys.argv[1], out=sys.argv[2], max_items=1, batch_size=4, formats=("geoparquet",),
              progress=False))
print(seen[0], sorted(set(seen[1:])))
"""


def test_a_local_run_imports_what_its_catalog_needs_while_the_model_works(tmp_path):
    """What writing the collection imports (stac-geoparquet, pandas, geopandas: 0.3 s) is imported
    after the first batch is written, with forward passes still to come, not after the last one."""
    done = subprocess.run([sys.executable, "-c", IMPORT_AHEAD, str(DEMO_CARD), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "('write', False) [('close', True), ('write', True)]", done.stderr
