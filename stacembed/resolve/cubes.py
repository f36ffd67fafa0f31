"""Sample cubes as STAC items: Embed2Scale challenge and SSL4EO-S12 v1.1 zipped Zarr files.

A sample cube is one zipped Zarr (v2) store, ``<id>.zarr.zip``, per modality; its pixels are the
variable ``bands`` with dimensions ``(sample, time, band, y, x)``. ``cube_items`` turns each
(sample, season) of each cube into one ``pystac.Item``, which a run embeds like any other item.

Where the cubes are (``--items``): a ``.zarr.zip`` file, a folder of them (the folder is the
modality), a folder of modality folders (``DATA/s1``, ``DATA/s2l1c``, ``DATA/s2l2a`` of the
challenge; ``S1GRD``, ``S2L1C``, ``S2L2A``, ``S2RGB`` of SSL4EO-S12 v1.1), or several of these
comma-separated. Each modality folder is a collection, named as the folder: ``--collection s2l2a``
picks one, ``--modality S1GRD=s1`` serves a card's input with one (given files only, the files of
the same names in the folder ``s1`` beside theirs, as the challenge's loader pairs them).

What an item holds (one sample ``s`` at one season ``t`` of a cube):

- id ``<sample>_<t>``; ``stacembed:sample`` is the sample: the file name without ``.zarr.zip`` when
  the cube holds one sample (the challenge's hash-like ids, which its submissions use), else the
  ``sample`` coordinate (SSL4EO-S12's ``0080717``; its index when there is none). Items of every
  modality with the same sample and season are one location (``by_sample``); ``stacembed:season``
  is ``t``; ``stacembed:sample_file`` the file name;
- ``datetime``: ``time_[s, t]``, else the first ``YYYYMMDDTHHMMSS`` in ``file_id[s, t]`` (the source
  product's name); a cube with neither is refused (a STAC item needs a time);
- one asset ``bands`` (the file, ``application/zip``) whose bands are named by the ``band``
  coordinate (``B01``..``B12``, ``vv``/``vh``) and read as ``bands[sample=s,time=t,band=b]``
  (``readers.zarr``); S1 bands (``vv``, ``vh``) are stated in dB (``unit``), as the cubes store
  them, so a card's ``stacembed:sar_db`` input does not convert them again;
- where the cube has ``crs[s]`` (an EPSG code) and ``x_[s, :]``/``y_[s, :]`` (projected coordinates,
  taken as pixel centres, xarray's convention; they must be regularly spaced, x increasing, y
  decreasing): ``proj:code``, ``proj:shape``, ``proj:transform`` (the grid's edge half a step
  out from the first centre) and the footprint as geometry. Without them the item has no geometry
  and is read on its pixel grid (``grid.Grid.unplaced``);
- the source metadata the cube has: ``stacembed:file_id`` and ``stacembed:sample_id`` of that
  season, ``stacembed:center_lat``/``stacembed:center_lon``, and ``eo:cloud_cover``: the percentage
  of the season's pixels whose ``cloud_mask`` is not 0 (what other values mean is not checked).

S2 offset (``shift_s2``, ``--shift-s2-channels``): the challenge's S2 values lack the +1000 DN
offset of ESA's processing baseline 04.00 that SSL4EO-S12 v1.1 has (its loader's
``shift_s2_channels`` adds 1000). With the option, each S2 band (cubes in a folder named
``s2l1c``/``s2l2a``, any case, else whose bands are all Sentinel-2 names, stored as integers of 16
bits or more) states ``raster:offset`` 1000, applied when read, and the items record
``stacembed:s2_offset: 1000``. Never implicit; never for ``s1``/``S1GRD``/``S2RGB`` folders.

Layout verified against public code (read, not copied):
- DLR-MF-DAS/embed2scale-challenge-supplement@272c911e8fb527d265de9be18fc81e16208ca0b6
  ``data_loading_submission_demo/challenge_dataset.py`` (``DATA/<modality>/<id>.zarr.zip``, id =
  file name without ``.zarr.zip``, ``xr.open_zarr(path)['bands']``, ``shift_s2_channels``) and
  ``demo_load_create_submission.ipynb`` (shapes ``[1, 4, 12|13|2, 264, 264]``, submission ids);
- DLR-MF-DAS/SSL4EO-S12-v1.1@33ac87889fcf1f9c2ee258fb286c4a5d6424eeb3 ``README.md`` (64 samples per
  file; coordinates ``band``, ``sample``, ``time``, ``x``/``y`` pixel indices; variables ``bands``,
  ``center_lat``, ``center_lon``, ``cloud_mask``, ``crs``, ``file_id``, ``sample_id``, ``time_``,
  ``x_``, ``y_``).
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from ..access import redact_text
from ..errors import ResolveError

SUFFIX = ".zarr.zip"
SAMPLE = "stacembed:sample"
SEASON = "stacembed:season"
S2_OFFSET = 1000
DIMS = ("sample", "time", "band", "y", "x")
_S2_FOLDERS = ("s2l1c", "s2l2a")
_OTHER_FOLDERS = ("s1", "s1grd", "s2rgb")
_S2_BANDS = re.compile(r"^B(0[1-9]|1[0-2]|8A)$", re.IGNORECASE)
_S1_BANDS = ("vv", "vh", "hh", "hv")
_METADATA = ("band", "sample", "center_lat", "center_lon", "crs", "file_id", "sample_id", "x_", "y_")
_PRODUCT_TIME = re.compile(r"(\d{8}T\d{6})")
_REGULAR = 1e-2  # as readers.zarr: coordinates closer to regular than this fraction of a step
_EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
_PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def is_cube_source(href: str) -> bool:
    """Whether ``--items`` names sample cubes: ``.zarr.zip`` files or folders of them (comma-separated)."""
    return all(_is_cube_part(part.strip()) for part in href.split(",") if part.strip())


def _is_cube_part(part: str) -> bool:
    path = Path(part)
    if part.lower().endswith(SUFFIX):
        return True
    return path.is_dir() and bool(_cubes_in(path) or any(_cubes_in(d) for d in _folders(path)))


def cube_files(href: str) -> list[tuple[str, Path]]:
    """(collection, file) of every cube ``href`` names, by modality folder, files in name order."""
    found: list[tuple[str, Path]] = []
    for part in (p.strip() for p in href.split(",") if p.strip()):
        path = Path(part)
        if "://" in part:
            raise ResolveError(f"sample cubes are read from local files; download {redact_text(part)!r} first")
        if part.lower().endswith(SUFFIX):
            if not path.is_file():
                raise ResolveError(f"sample cube {part!r} does not exist")
            found.append((path.resolve().parent.name, path.resolve()))
        elif _cubes_in(path):
            found += [(path.resolve().name, f) for f in _cubes_in(path)]
        else:
            found += [(d.name, f) for d in _folders(path) for f in _cubes_in(d)]
    if not found:
        raise ResolveError(f"no sample cubes (*{SUFFIX}) in {href!r}")
    return found


def _siblings(files: list[tuple[str, Path]], wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """For a modality no file given is of: the files of the same names in its folder beside theirs
    (``DATA/s2l2a/<id>.zarr.zip`` -> ``DATA/s1/<id>.zarr.zip``, as the challenge's loader pairs them)."""
    there = {c for c, _ in files}
    found = [(c, path.parent.parent / c / path.name) for c in wanted if c not in there for _, path in files]
    return list(dict.fromkeys((c, path) for c, path in found if path.is_file()))


def _folders(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


def _cubes_in(path: Path) -> list[Path]:
    return sorted(f.resolve() for f in path.glob(f"*{SUFFIX}") if f.is_file()) if path.is_dir() else []


def cube_items(href: str, collections: tuple[str, ...] = (), *, shift_s2: bool = False) -> list[pystac.Item]:
    """The items of the cubes ``href`` names (see the module docstring), of ``collections`` when given
    (a collection no folder serves is an error naming those there are)."""
    files = cube_files(href)
    files += _siblings(files, collections)
    there = sorted({c for c, _ in files})
    missing = [c for c in collections if c not in there]
    if missing:
        raise ResolveError(f"no modality folder {missing[0]!r} of sample cubes in {href!r} (there are: "
                           f"{', '.join(there)})")
    return [item for collection, path in files if not collections or collection in collections
            for item in _file_items(path, collection, shift_s2)]


def _file_items(path: Path, collection: str, shift_s2: bool) -> list[pystac.Item]:
    from ..readers.zarr import store_errors, zarr_root

    with store_errors(str(path)):
        root = zarr_root(str(path))
        cube = _Cube(path, root)
        return [cube.item(s, t, collection, shift_s2) for s in range(cube.samples) for t in range(cube.seasons)]


class _Cube:
    """One cube file's metadata, read once: what every item of it needs."""

    def __init__(self, path: Path, root: Any) -> None:
        self.path, self.name = path, path.name
        keys = sorted(root.array_keys())
        if "bands" not in keys:
            raise ResolveError(f"{path} has no variable 'bands' (it has: {', '.join(keys) or 'none'}); a sample "
                               f"cube keeps its pixels in 'bands' with dimensions ({', '.join(DIMS)})")
        array = root["bands"]
        dims = tuple(array.attrs.get("_ARRAY_DIMENSIONS") or ())
        if dims != DIMS:
            raise ResolveError(f"{path}: 'bands' has dimensions {dims or array.shape}, not {DIMS}: it is not an "
                               "Embed2Scale / SSL4EO-S12 v1.1 sample cube")
        self.samples, self.seasons, _, self.height, self.width = array.shape
        self.dtype = np.dtype(array.dtype)
        # The small variables, each read whole once (a chunk may hold every sample).
        self.vars = {key: np.asarray(root[key][...]) for key in keys if key in _METADATA}
        if "band" not in self.vars:
            raise ResolveError(f"{path} has no 'band' coordinate naming its bands; stacembed matches them to the "
                               "model's bands by name")
        self.band_names = [str(b) for b in self.vars["band"]]
        self.sample_names = [str(v) for v in self.vars.get("sample", range(self.samples))]
        self.times = self._times(root) if "time_" in keys else None
        self.cloud = None
        if "cloud_mask" in keys:
            mask = np.asarray(root["cloud_mask"][...]).reshape(self.samples, self.seasons, -1)
            self.cloud = np.count_nonzero(mask, axis=2) * 100 / mask.shape[2]

    def _at(self, name: str, *index: int) -> Any:
        """``name[index]`` of a small variable, or None when the cube has none."""
        if name not in self.vars:
            return None
        value = self.vars[name][index]
        return value.item() if isinstance(value, np.generic) else value

    @staticmethod
    def _times(root: Any) -> np.ndarray:
        from xarray.coding.times import decode_cf_datetime

        array = root["time_"]
        values = np.asarray(array[...])
        if values.dtype.kind == "M":
            return values.astype("datetime64[us]")
        return np.asarray(decode_cf_datetime(values, array.attrs.get("units"), array.attrs.get("calendar")),
                          dtype="datetime64[us]")

    def sample(self, s: int) -> str:
        """The sample's id: the file name less ``.zarr.zip`` for a cube of one sample, else its coordinate."""
        return self.name[: -len(SUFFIX)] if self.samples == 1 else self.sample_names[s]

    def when(self, s: int, t: int) -> datetime:
        if self.times is not None and not np.isnat(self.times[s, t]):
            return self.times[s, t].astype(datetime).replace(tzinfo=UTC)
        found = _PRODUCT_TIME.search(str(self._at("file_id", s, t) or ""))
        if found is None:
            raise ResolveError(f"{self.path}: sample {self.sample(s)!r} season {t} has no time (no time_ variable, "
                               "no date in file_id); a STAC item needs one")
        return datetime.strptime(found[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)

    def item(self, s: int, t: int, collection: str, shift_s2: bool) -> pystac.Item:
        sample = self.sample(s)
        properties: dict[str, Any] = {SAMPLE: sample, SEASON: t, "stacembed:sample_file": self.name}
        for name, key in (("file_id", "stacembed:file_id"), ("sample_id", "stacembed:sample_id")):
            if self._at(name, s, t) is not None:
                properties[key] = str(self._at(name, s, t))
        for name in ("center_lat", "center_lon"):
            if self._at(name, s) is not None:
                properties[f"stacembed:{name}"] = float(self._at(name, s))
        extensions = []
        if self.cloud is not None:
            properties["eo:cloud_cover"] = round(float(self.cloud[s, t]), 4)
            extensions.append(_EO)
        shifted = shift_s2 and self._is_s2(collection)
        if shifted:
            properties["stacembed:s2_offset"] = S2_OFFSET
        place = self._place(s)
        if place:
            properties.update(place[0])
            extensions.append(_PROJ)
        item = pystac.Item(f"{sample}_{t}", place[1] if place else None, place[2] if place else None,
                           self.when(s, t), properties, collection=collection, stac_extensions=extensions)
        item.add_asset("bands", pystac.Asset(str(self.path), media_type="application/zip", roles=["data"],
                                             extra_fields={"bands": self._bands(s, t, shifted)}))
        return item

    def _is_s2(self, collection: str) -> bool:
        """S2 digital numbers: by the modality folder when it is a known one, else by band names (all
        Sentinel-2's) stored as integers of 16 bits or more (not 8-bit RGB)."""
        folder = collection.lower()
        if folder in _S2_FOLDERS or folder in _OTHER_FOLDERS:
            return folder in _S2_FOLDERS
        return self.dtype.kind in "iu" and self.dtype.itemsize >= 2 and \
            all(_S2_BANDS.match(name) for name in self.band_names)

    def _bands(self, s: int, t: int, shifted: bool) -> list[dict[str, Any]]:
        bands = []
        for b, name in enumerate(self.band_names):
            band: dict[str, Any] = {"name": name, "stacembed:variable": f"bands[sample={s},time={t},band={b}]"}
            if shifted:
                band["raster:offset"] = S2_OFFSET
            if name.lower() in _S1_BANDS:
                band["unit"] = "dB"
            bands.append(band)
        return bands

    def _place(self, s: int) -> tuple[dict[str, Any], dict, list[float]] | None:
        """(proj:* fields, GeoJSON footprint, bbox) of sample ``s`` from ``crs`` and ``x_``/``y_``, or None."""
        if not all(name in self.vars for name in ("crs", "x_", "y_")):
            return None
        code = int(self._at("crs", s))
        xs, ys = self._at("x_", s), self._at("y_", s)
        (x0, dx), (y0, dy) = self._step(xs, "x_", s), self._step(ys, "y_", s)
        if dx <= 0 or dy >= 0:
            raise ResolveError(f"{self.path}: sample {self.sample(s)!r} is not stored north-up (x_ must increase, "
                               "y_ decrease)")
        transform = [dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2]
        fields = {"proj:code": f"EPSG:{code}", "proj:shape": [self.height, self.width], "proj:transform": transform}
        return fields, *_footprint(code, transform, self.width, self.height)

    def _step(self, values: np.ndarray, name: str, s: int) -> tuple[float, float]:
        """(first centre, step) of regularly spaced coordinates."""
        v = np.asarray(values, "float64")
        step = (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else 0.0
        if not step or not math.isfinite(step) or np.max(np.abs(np.diff(v) - step)) > _REGULAR * abs(step):
            raise ResolveError(f"{self.path}: {name} of sample {self.sample(s)!r} is not a regular grid of pixel "
                               "centres")
        return float(v[0]), float(step)


def _footprint(code: int, transform: list[float], width: int, height: int) -> tuple[dict, list[float]]:
    """GeoJSON polygon (lon/lat, edges densified: ``Grid.outline``) and bbox of a grid."""
    import shapely.geometry
    from affine import Affine

    from ..grid import Grid

    shape = Grid(_crs(code), Affine(*transform), width, height).outline()
    return shapely.geometry.mapping(shape), [float(v) for v in shape.bounds]


@functools.lru_cache(maxsize=64)
def _crs(code: int):
    """The CRS of an EPSG code, made once per code (samples share a few)."""
    from rasterio.crs import CRS

    return CRS.from_epsg(code)


def sample_key(item: pystac.Item) -> tuple[str, int] | None:
    """(sample, season) of an item made from a sample cube, None for any other item."""
    sample = item.properties.get(SAMPLE)
    return None if sample is None else (str(sample), int(item.properties.get(SEASON, 0)))


def by_sample(candidates: list[tuple[pystac.Item, Any]]) -> dict[tuple[str, int], tuple[pystac.Item, Any]]:
    """Another modality's cube items by (sample, season), the first of each: an item of a sample of
    the primary modality is served by the one of its key (cubes of several modalities hold the same
    samples on the same pixels: no footprints, no times compared). Built once per modality, so
    pairing 20,000 items costs 20,000 lookups, not 20,000 scans."""
    index: dict[tuple[str, int], tuple[pystac.Item, Any]] = {}
    for pair in candidates:
        key = sample_key(pair[0])
        if key is not None:
            index.setdefault(key, pair)
    return index


def states_db(item: pystac.Item, bands: list[Any]) -> bool:
    """Whether every band read from ``item`` is stated in dB (``unit``): SAR values already logarithmic."""
    units = {}
    for key, asset in item.assets.items():
        for band in asset.extra_fields.get("bands") or []:
            units[(key, band.get("stacembed:variable") or band.get("name"))] = band.get("unit")
    return bool(bands) and all(units.get((band.asset_key, band.variable)) == "dB" for band in bands)


__all__ = ["SAMPLE", "SEASON", "by_sample", "cube_items", "is_cube_source", "sample_key", "states_db"]
