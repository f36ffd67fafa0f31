import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from stacembed import chips as chips_module
from stacembed.chips import ChipGrid, read_batches, run_length
from stacembed.grid import Grid
from stacembed.readers.stack import StackReader

GRID = Grid(CRS.from_epsg(32725), Affine(30.0, 0, 500010.0, 0, -30.0, 9100020.0), width=100, height=70)


def test_grid_covers_raster_with_padding_at_far_edges():
    chips = ChipGrid(GRID, size=32, stride=32)
    assert (chips.rows, chips.cols) == (3, 4)  # 70 -> 0,32,64 ; 100 -> 0,32,64,96
    last = chips.chip(2, 3)
    assert (last.window.row_off, last.window.col_off) == (64, 96)
    overlapping = ChipGrid(GRID, size=32, stride=16)
    assert (overlapping.rows, overlapping.cols) == (4, 6)


def test_footprints_lie_on_source_pixel_edges():
    chips = ChipGrid(GRID, size=32, stride=24)
    for chip in chips:
        minx, miny, maxx, maxy = chips.bounds(chip)
        for x in (minx, maxx):
            assert ((x - 500010.0) / 30.0).is_integer()
        for y in (miny, maxy):
            assert ((9100020.0 - y) / 30.0).is_integer()
        assert maxx - minx == 32 * 30.0 == maxy - miny


@pytest.mark.parametrize(("pixel", "size", "densified"), [(10.0, 1, False), (10.0, 5, False), (10.0, 6, True),
                                                         (30.0, 32, True)])
def test_lonlat_footprints_keep_their_shape_densified_only_where_edges_bend(pixel, size, densified):
    """A window's lon/lat footprint is densified (an eighth of its side) unless it is under 50 m
    wide, where its corners alone are within half a millimetre of the true outline: checked at
    UTM's 84th parallel against 1,000 points per edge projected with pyproj."""
    import shapely
    from pyproj import Transformer

    west, north = 500000.0, 9_330_000.0  # UTM 33N near 84 N, where edges bend the most
    grid = Grid(CRS.from_epsg(32633), Affine(pixel, 0, west, 0, -pixel, north), width=64, height=64)
    (polygon,) = grid.footprints(np.array([3]), np.array([2]), size).crs84
    assert len(shapely.get_coordinates(polygon)) == (33 if densified else 5)
    t = np.linspace(0, 1, 1000)
    left, top, side = west + 3 * pixel, north - 2 * pixel, size * pixel
    xs = np.concatenate([left + side * t, np.full_like(t, left + side), left + side * (1 - t), np.full_like(t, left)])
    ys = np.concatenate([np.full_like(t, top), top - side * t, np.full_like(t, top - side), top - side * (1 - t)])
    lon, lat = Transformer.from_crs(32633, "OGC:CRS84", always_xy=True).transform(xs, ys)
    truth = shapely.linestrings(np.column_stack([lon, lat]))
    metres_per_degree = 111_320 * np.cos(np.radians(84.2))  # of longitude there: the shorter degree
    assert shapely.hausdorff_distance(polygon.exterior, truth) * metres_per_degree < 0.5e-3


def test_embedding_grid_pixels_are_centred_on_chips():
    chips = ChipGrid(GRID, size=32, stride=16)
    emb = chips.embedding_grid
    assert (emb.width, emb.height) == (chips.cols, chips.rows)
    assert emb.transform.a == 16 * 30.0 and emb.transform.e == -16 * 30.0
    for chip in [chips.chip(0, 0), chips.chip(2, 5)]:
        minx, miny, maxx, maxy = chips.bounds(chip)
        cx, cy = emb.transform @ (chip.col + 0.5, chip.row + 0.5)
        assert (cx, cy) == ((minx + maxx) / 2, (miny + maxy) / 2)
    same = ChipGrid(GRID, size=32, stride=32)
    assert same.embedding_grid.window_bounds(
        __import__("rasterio").windows.Window(1, 1, 1, 1)) == same.bounds(same.chip(1, 1))


@pytest.fixture(params=["runs of a batch", "runs of a chip row"])
def run_bytes(request, monkeypatch):
    """Read runs as short as a batch (1 byte: never more than a batch fits) or a whole chip row."""
    monkeypatch.setattr(chips_module, "RUN_BYTES", 1 if request.param == "runs of a batch" else 2**30)


def test_read_batches_pads_edges_and_applies_min_valid(run_bytes):
    data = np.arange(2 * 70 * 100, dtype="float32").reshape(2, 70, 100)
    data[:, :10, :] = np.nan  # a strip without data
    stack = StackReader(xr.DataArray(data, dims=("band", "y", "x")))
    chips = ChipGrid(GRID, size=32, stride=32)
    batches = list(read_batches(stack, chips, batch_size=5, min_valid=0.5))
    got = [c for b in batches for c in b.chips]
    assert all(len(b.chips) <= 5 for b in batches)
    # bottom row chips hold 6 of 32 rows of data; last column 4 of 32 columns: skipped
    assert {(c.row, c.col) for c in got} == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    first = batches[0]
    np.testing.assert_array_equal(first.pixels[0], data[:, 0:32, 0:32])
    assert first.valid_fraction[0] == (32 - 10) / 32
    everything = list(read_batches(stack, chips, batch_size=64, min_valid=0.0))
    edge = next(p for b in everything for c, p in zip(b.chips, b.pixels, strict=True) if (c.row, c.col) == (2, 3))
    np.testing.assert_array_equal(edge[:, :6, :4], data[:, 64:70, 96:100])
    assert np.isnan(edge[:, 6:, :]).all() and np.isnan(edge[:, :, 4:]).all()


def test_valid_fractions_match_each_chip_counted_on_its_own(run_bytes):
    rng = np.random.default_rng(3)
    data = rng.random((3, 70, 100)).astype("float32")
    data[rng.random(data.shape) < 0.2] = np.nan  # scattered gaps in single bands
    data[:, 40:55, 20:90] = np.nan
    stack = StackReader(xr.DataArray(data, dims=("band", "y", "x")))
    for size, stride in ((32, 32), (32, 12), (16, 16)):
        chips = ChipGrid(GRID, size=size, stride=stride)
        for batch in read_batches(stack, chips, batch_size=4, min_valid=0.0):
            for chip, fraction in zip(batch.chips, batch.valid_fraction, strict=True):
                r, c = chip.window.row_off, chip.window.col_off
                window = np.full((3, size, size), np.nan, "float32")
                part = data[:, r:r + size, c:c + size]
                window[:, :part.shape[1], :part.shape[2]] = part
                assert fraction == np.float32(np.isfinite(window).all(axis=0).mean()), (size, stride, chip)


def test_read_runs_span_a_batch_or_more_as_bytes_allow_and_give_the_same_batches(monkeypatch):
    assert run_length(16, 6 * 64 * 64 * 4) == 85  # 8 MiB of 6-band 64 px chips
    assert run_length(16, 13 * 224 * 224 * 4) == 16  # large chips: one batch per run
    data = np.random.default_rng(4).random((2, 70, 100)).astype("float32")
    stack = StackReader(xr.DataArray(data, dims=("band", "y", "x")))
    grid = ChipGrid(GRID, size=16, stride=8)
    results = []
    for limit in (1, 2**30):
        monkeypatch.setattr(chips_module, "RUN_BYTES", limit)
        results.append(list(read_batches(stack, grid, batch_size=3, min_valid=0.0)))
    short, long = results
    assert [b.chips for b in short] == [b.chips for b in long] and all(len(b.chips) <= 3 for b in long)
    for a, b in zip(short, long, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.valid_fraction, b.valid_fraction)


def _write(path, data, nodata=None, mask=None):
    """A tiled GeoTIFF of ``data`` (band, y, x) on GRID, with a nodata value or an internal mask."""
    import rasterio

    profile = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=len(data), dtype=data.dtype,
                   crs=GRID.crs, transform=GRID.transform, tiled=True, blockxsize=32, blockysize=32, nodata=nodata)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(np.where(mask, 255, 0).astype("uint8"))
    return str(path)


def _native(tmp_path, case):
    """A two-band file of each kind of missing data, its BandSources, and the measurements an
    independent computation expects (float64 scaling rounded once, NaN where there is no data)."""
    import pystac

    from stacembed.bands import BandSource
    from stacembed.readers import DirectReader

    rng = np.random.default_rng(7)
    raw = rng.integers(1, 4000, (2, GRID.height, GRID.width)).astype("uint16")
    gaps = rng.random(raw.shape) < 0.15
    gaps[:, 40:55, 20:90] = True
    scale, offset, declared, file_nodata, mask = 1.0, 0.0, None, None, None
    if case == "declared nodata, scaled":
        raw[gaps] = 0
        scale, offset, declared = 0.5, -1.0, 0.0
    elif case == "file nodata":
        raw[gaps] = 0
        file_nodata = 0
    elif case == "float NaN, nothing declared":
        raw = raw.astype("float32")
        raw[gaps] = np.nan
    elif case == "internal mask":
        mask = ~gaps.any(axis=0)
    else:  # "all valid": integers with neither nodata nor mask
        gaps[:] = False
    href = _write(tmp_path / "b.tif", raw, nodata=file_nodata, mask=mask)
    bands = [BandSource(f"b{i}", "b", href, index=i, scale=scale, offset=offset, nodata=declared) for i in (1, 2)]
    expected = (raw.astype("float64") * scale + offset).astype("float32")
    expected[np.broadcast_to(~mask, gaps.shape) if mask is not None else gaps] = np.nan
    item = pystac.Item("native", None, None, __import__("datetime").datetime(2024, 1, 1), {})
    return DirectReader([(item, bands)], GRID), expected


NATIVE_CASES = ["declared nodata, scaled", "file nodata", "float NaN, nothing declared", "internal mask", "all valid"]


@pytest.mark.parametrize("case", NATIVE_CASES)
def test_direct_reads_give_the_chips_and_fractions_of_an_independent_stack(tmp_path, case, run_bytes):
    """Masks come from the reader's own checks (no isfinite pass): they must count exactly what
    a NaN count over independently computed measurements counts, band by band."""
    reader, expected = _native(tmp_path, case)
    chips = ChipGrid(GRID, size=16, stride=12)
    try:
        direct = list(read_batches(reader, chips, batch_size=5, min_valid=0.3))
    finally:
        reader.close()
    stacked = list(read_batches(StackReader(xr.DataArray(expected, dims=("band", "y", "x"))), chips,
                                batch_size=5, min_valid=0.3))
    assert [b.chips for b in direct] == [b.chips for b in stacked] and direct
    for a, b in zip(direct, stacked, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.valid_fraction, b.valid_fraction)
    if case == "all valid":  # padding past the last row (rows 60-75 of 70) still counts as no data
        fractions = {c.row: f for b in direct for c, f in zip(b.chips, b.valid_fraction, strict=True)}
        assert fractions[chips.rows - 1] == 10 / 16 and fractions[0] == 1


@pytest.mark.parametrize("case", NATIVE_CASES)
def test_direct_reads_keep_the_files_integer_type_only_where_no_pixel_can_lack_data(tmp_path, case):
    """Integer bands without mask, nodata, scale or offset come back in their own type (GDAL
    reads straight into the block; no float32 pass in the reader): the same values. Anything
    that may put a NaN in, or scale, gives float32 measurements."""
    reader, expected = _native(tmp_path, case)
    try:
        block, valid = reader.read(slice(0, 20), slice(5, 35))
    finally:
        reader.close()
    assert block.dtype == (np.uint16 if case == "all valid" else np.float32)
    assert (valid is None) == (case == "all valid")
    np.testing.assert_array_equal(block, expected[:, :20, 5:35])


def test_batches_of_consecutive_chips_are_views_of_the_pixels_read(run_bytes):
    """The reading thread does not copy a batch that a run holds whole; one made of pieces is
    copied. Either way its pixels are the chips' windows."""
    data = np.random.default_rng(5).random((2, 70, 100)).astype("float32")
    data[:, 32:, 70:] = np.nan  # chips of the lower right are dropped
    chips = ChipGrid(GRID, size=16, stride=8)  # 12 columns, the last padded; batches of 5 straddle rows
    batches = list(read_batches(StackReader(xr.DataArray(data, dims=("band", "y", "x"))), chips,
                                batch_size=5, min_valid=0.6))
    assert sum(not b.pixels.flags.owndata for b in batches) >= len(batches) // 2
    padded = np.full((2, 80, 112), np.nan, "float32")
    padded[:, :70, :100] = data
    for batch in batches:
        for chip, pixels in zip(batch.chips, batch.pixels, strict=True):
            r, c = chip.window.row_off, chip.window.col_off
            np.testing.assert_array_equal(pixels, padded[:, r:r + 16, c:c + 16])
