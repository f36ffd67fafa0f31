"""stacembed benchmarks: end-to-end throughput against its compute and I/O bounds, a naive
baseline, and peak memory as the area grows.

    python benchmarks/run.py [--base-size 2048] [--size-factors 1,4,16] [--json results.json]

See benchmarks/README.md for what each number means. In one process, on the same data and
model, for each model (``--models``):

- ``e2e``: ``stacembed.run(RunConfig(...))`` (GeoParquet + GeoTIFF, CPU), chips / wall second;
- ``compute``: the same model's ``Embedder`` (value scaling included) on the same number of
  chips, already in memory as float32, in a tight loop, with the torch threads the run used;
- ``io``: single-threaded rasterio reads of the same chip windows, every band;
- ``naive``: what a notebook user writes: read every band whole, normalise, loop over the
  chips, forward in batches (same torch threads as the run);

and, before any of that (while this process is still small), for each area factor one
end-to-end run in a fresh subprocess, whose peak RSS is that child's ``ru_maxrss`` from
``os.wait4`` (see ``measure_rss``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_data  # noqa: E402

MODELS = bench_data.MODELS
# The seeded artifacts each benchmark model's card points at (built once, into .data/models/).
ARTIFACTS = {"resnet18": bench_data.build_resnet18_weights, "vit-s16": bench_data.build_vit_s16_weights,
             "prithvi-tiny": bench_data.build_prithvi_tiny_artifact}
# Throughput item side per model, so that each runs for ten seconds or more end to end on 2
# cores (the demo model does 4,096 chips in ~3 s, where start-up and the last item's files
# weigh 5-10%); models not listed get DEFAULT_THROUGHPUT_SIDE. ``--throughput-size`` overrides.
# The 224 px models: 625 chips (ViT-S/16 ~30 s; the compute bound holds the item in memory).
# The CLI against the best bound, start-up included: benchmarks/cli_run.py.
THROUGHPUT_SIDES = {"demo": 8192, "vit-s16": 5600, "prithvi-tiny": 5600}
DEFAULT_THROUGHPUT_SIDE = 4096
TARGET_BOUND_RATIO = 0.9
TARGET_RSS_GROWTH = 1.25
FORMATS = ["geoparquet", "geotiff"]


class BenchError(RuntimeError):
    """A benchmark cannot run; printed as one line."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# the measurements


def run_config(catalog: Path, model: str, out: Path, args: argparse.Namespace):
    from stacembed import RunConfig

    values: dict[str, Any] = {
        "catalog": str(catalog), "model": model, "out": str(out), "formats": FORMATS,
        "batch_size": args.batch_size, "device": "cpu", "offline": True, "progress": False,
    }
    if args.threads is not None:
        values["threads"] = args.threads
    values.update(args.set)
    return RunConfig.from_mapping(values)


def measure_e2e(catalog: Path, model: str, out: Path, args: argparse.Namespace, profile: Path | None = None) -> dict:
    """One in-process ``stacembed.run``; chips per wall-clock second of the whole call."""
    import torch

    import stacembed

    config = run_config(catalog, model, out, args)
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        summary = stacembed.run(config)
        profiler.disable()
        seconds = time.perf_counter() - start
        profiler.dump_stats(str(profile))
    else:
        start = time.perf_counter()
        summary = stacembed.run(config)
        seconds = time.perf_counter() - start
    if summary.chips == 0:
        raise BenchError(f"stacembed.run embedded no chips from {catalog}")
    return {"chips": summary.chips, "seconds": seconds, "chips_per_s": summary.chips / seconds,
            "torch_threads": torch.get_num_threads(), "streams": summary.streams,
            "first_batch_s": summary.first_batch_seconds}


STARTUP_IMPORTS = {"cli": "stacembed.cli", "pipeline": "stacembed.pipeline"}


def measure_startup(repeat: int = 3) -> dict[str, float]:
    """Seconds a fresh interpreter takes to import what ``stacembed --help`` needs (``cli``) and
    what a run needs before it resolves anything (``pipeline``): medians of ``repeat``."""
    seconds: dict[str, float] = {}
    for name, module in STARTUP_IMPORTS.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    return seconds


@dataclasses.dataclass
class Subject:
    """The data and model of one benchmark: band files in the card's order and the chip grid."""

    card: Any
    weights: Path | None
    hrefs: list[str]
    height: int
    width: int
    chip: int
    stride: int

    @property
    def windows(self) -> list[tuple[int, int, int, int]]:
        """(row, col, row_off, col_off) of every chip, the stacembed edge rule (start top-left)."""
        def positions(length: int) -> int:
            return 1 if length <= self.chip else -(-(length - self.chip) // self.stride) + 1

        return [(r, c, r * self.stride, c * self.stride)
                for r in range(positions(self.height)) for c in range(positions(self.width))]


def subject(catalog: Path, model: str, args: argparse.Namespace) -> Subject:
    from stacembed.job import Inputs
    from stacembed.models.weights import resolve_weights

    config = run_config(catalog, model, Path(tempfile.gettempdir()) / "unused", args)
    prepared = Inputs.resolve(config)
    if len(prepared.series) != 1:
        raise BenchError(f"{catalog}: expected one item, found {len(prepared.series)}")
    series = prepared.series[0]
    grid = prepared.plan_item(series).chip_grid.grid
    bands = series.acquisitions[0].bands
    if any(b.index != 1 or b.scale != 1 or b.offset != 0 or b.nodata is not None for b in bands):
        raise BenchError("the bounds assume single-band, unscaled assets without nodata (the benchmark data)")
    weights = resolve_weights(prepared.card, config.weights, offline=True)
    return Subject(prepared.card, weights, [b.href for b in bands], grid.height, grid.width,
                   prepared.chip_size, prepared.stride)


def read_stack(sub: Subject):
    """The whole item as (band, H, W) float32 measurements (no scale/offset/nodata in this data)."""
    import numpy as np
    import rasterio

    arrays = []
    for href in sub.hrefs:
        with rasterio.open(href) as ds:
            arrays.append(ds.read(1))
    return np.stack(arrays).astype("float32")


def chip_pixels(stack, sub: Subject, row_off: int, col_off: int, fill: float = float("nan")):
    """One chip of ``stack``, padded with ``fill`` past the right and bottom edges (stacembed's edge rule)."""
    import numpy as np

    block = stack[:, row_off:row_off + sub.chip, col_off:col_off + sub.chip]
    if block.shape[1:] == (sub.chip, sub.chip):
        return block
    padded = np.full((stack.shape[0], sub.chip, sub.chip), fill, dtype="float32")
    padded[:, :block.shape[1], :block.shape[2]] = block
    return padded


def measure_compute(sub: Subject, chips: int, batch_size: int, threads: int, streams: int = 1,
                    memory_mb: int = 512) -> dict:
    """``Embedder`` forward passes (value scaling included) over ``chips`` preprocessed chips.

    The chips are the item's own pixels, stacked into batches before the clock starts. At most
    ``memory_mb`` of distinct batches are held; beyond that the same batches are used again.
    ``streams`` batches go through the model at once, with as many queued, as in the run
    (``ordered_map``, ``FeedSpec.ahead``).
    """
    import numpy as np
    import torch

    from stacembed.concurrency import ordered_map
    from stacembed.embed import Embedder
    from stacembed.feed import AHEAD_BYTES

    torch.set_num_threads(threads)
    embedder = Embedder.from_card(sub.card, sub.weights, torch.device("cpu"), chip_size=sub.chip, streams=streams)
    stack = read_stack(sub)
    windows = sub.windows
    per_batch = batch_size * stack.shape[0] * sub.chip * sub.chip * 4
    distinct = max(1, min(-(-chips // batch_size), memory_mb * 2**20 // per_batch))
    batches = []
    for b in range(distinct):
        picked = [windows[(b * batch_size + i) % len(windows)] for i in range(batch_size)]
        batches.append(np.ascontiguousarray(np.stack([chip_pixels(stack, sub, r0, c0) for _, _, r0, c0 in picked])))
    del stack
    sizes = [min(batch_size, chips - first) for first in range(0, chips, batch_size)]
    for _ in ordered_map(embedder, batches[:streams], streams):  # warm-up, untimed
        pass
    start = time.perf_counter()
    ahead = max(1, AHEAD_BYTES // per_batch)
    for _ in ordered_map(embedder, (batches[i % distinct][:n] for i, n in enumerate(sizes)), streams, ahead):
        pass
    seconds = time.perf_counter() - start
    done = sum(sizes)
    return {"chips": done, "seconds": seconds, "chips_per_s": done / seconds, "torch_threads": threads,
            "streams": streams, "distinct_batches": distinct}


def measure_io(sub: Subject) -> dict:
    """Single-threaded rasterio reads of every chip window, all bands (files opened once)."""
    import rasterio
    from rasterio.windows import Window

    windows = sub.windows
    with rasterio.Env():
        datasets = [rasterio.open(href) for href in sub.hrefs]
        try:
            start = time.perf_counter()
            for _, _, row_off, col_off in windows:
                h = min(sub.chip, sub.height - row_off)
                w = min(sub.chip, sub.width - col_off)
                for ds in datasets:
                    ds.read(1, window=Window(col_off, row_off, w, h))
            seconds = time.perf_counter() - start
        finally:
            for ds in datasets:
                ds.close()
        # The same pixels read one chip row (a strip of full width) at a time, from files opened
        # anew: GDAL's block cache is per open dataset, so no tile decoded above is reused.
        datasets = [rasterio.open(href) for href in sub.hrefs]
        try:
            start = time.perf_counter()
            for row_off in sorted({r for _, _, r, _ in windows}):
                h = min(sub.chip, sub.height - row_off)
                for ds in datasets:
                    ds.read(1, window=Window(0, row_off, sub.width, h))
            strip_seconds = time.perf_counter() - start
        finally:
            for ds in datasets:
                ds.close()
    n = len(windows)
    return {"chips": n, "seconds": seconds, "chips_per_s": n / seconds,
            "strips_seconds": strip_seconds, "strips_chips_per_s": n / strip_seconds}


def measure_read_path(catalog: Path, model: str, args: argparse.Namespace) -> dict:
    """stacembed's own read path without the model: the pixel source ``stacembed.run`` picks
    (direct windows, or a lazy stack when resampling) + ``read_batches``, in line, with the
    run's reader setup. Not a bound: it shows what reading costs before any overlap.
    """
    from stacembed.job import Inputs

    config = run_config(catalog, model, Path(tempfile.gettempdir()) / "unused", args)
    inputs = Inputs.resolve(config)
    # what stacembed.run reads
    spec = inputs.feed_spec(inputs.plan_item(inputs.series[0]), config.batch_size or args.batch_size)
    start = time.perf_counter()
    chips = sum(len(b.chips) for b in spec.batches())
    seconds = time.perf_counter() - start
    return {"chips": chips, "seconds": seconds, "chips_per_s": chips / seconds, "chunks": list(spec.chunks),
            "reader_threads": spec.reader_threads}


def measure_naive(sub: Subject, batch_size: int, threads: int) -> tuple[dict, Any]:
    """The notebook way: read every band whole, normalise in numpy, loop over chips, forward.

    The model is built with timm and its weights loaded with safetensors as a user would; that
    setup is not timed. Returns the timings and the (rows, cols, D) embeddings.
    """
    import numpy as np
    import timm
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    card = sub.card
    model = timm.create_model(card.architecture, pretrained=False, in_chans=len(card.bands), num_classes=0)
    if sub.weights is not None:
        model.load_state_dict(load_file(str(sub.weights)))
    else:
        raise BenchError(f"model {card.name}: the naive baseline needs a weights file")
    model.eval()
    steps = list(card.value_scaling)
    if len(steps) == 1:
        steps *= len(card.bands)
    if not steps or any(s is None or s.get("type") != "z-score" for s in steps):
        raise BenchError(f"model {card.name}: the naive baseline implements z-score value scaling only")
    mean = np.array([s["mean"] for s in steps], "float32")[:, None, None]
    std = np.array([s["stddev"] for s in steps], "float32")[:, None, None]
    windows = sub.windows
    start = time.perf_counter()
    stack = read_stack(sub)
    read_seconds = time.perf_counter() - start
    stack = np.nan_to_num((stack - mean) / std, nan=0.0)
    outputs = []
    with torch.inference_mode():
        for first in range(0, len(windows), batch_size):
            # padding past the edges enters as 0 after scaling, stacembed's rule for missing pixels
            batch = [chip_pixels(stack, sub, r0, c0, fill=0.0) for _, _, r0, c0 in windows[first:first + batch_size]]
            x = torch.from_numpy(np.stack(batch))
            outputs.append(model(x).numpy())
    seconds = time.perf_counter() - start
    rows = windows[-1][0] + 1
    embeddings = np.concatenate(outputs).reshape(rows, -1, outputs[0].shape[-1])
    n = len(windows)
    return ({"chips": n, "seconds": seconds, "chips_per_s": n / seconds, "read_seconds": read_seconds,
             "torch_threads": threads, "stack_mb": stack.nbytes / 2**20}, embeddings)


def compare_embeddings(out: Path, naive) -> float:
    """Largest |e2e - naive| over all chips, from the run's GeoParquet (a check that both did the same work)."""
    import numpy as np
    import pyarrow.parquet as pq

    files = [p for p in out.glob("*/*/*.parquet")]
    if len(files) != 1:
        raise BenchError(f"expected one GeoParquet file in {out}, found {len(files)}")
    table = pq.read_table(files[0], columns=["chip_row", "chip_col", "embedding"])
    rows = table.column("chip_row").to_numpy()
    cols = table.column("chip_col").to_numpy()
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype("float32")
    if len(rows) == 0:
        raise BenchError(f"the run wrote no chips to {files[0]}")
    return float(np.abs(emb - naive[rows, cols]).max())


# --------------------------------------------------------------------------------------------
# peak RSS in fresh subprocesses


def maxrss_mb(value: int) -> float:
    """``ru_maxrss`` in MiB (kilobytes on Linux, bytes on macOS)."""
    return value / (2**20 if sys.platform == "darwin" else 2**10)


def peak_rss_self_mb() -> tuple[float, str]:
    """This process's peak RSS in MiB, and how it was measured.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this address space only.
    ``ru_maxrss`` is not used there because Linux carries it over fork/exec: a child spawned by
    a big parent reports at least the parent's peak. Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except OSError:
        pass
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), "ru_maxrss"


def rss_child(args: argparse.Namespace) -> None:
    """Runs in the fresh subprocess: one end-to-end run, results written to ``--result``."""
    import threading

    parent = os.getppid()

    def orphaned() -> None:  # the parent was killed (SIGKILL leaves no chance to stop us): stop too
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=orphaned, name="bench-orphan-watch", daemon=True).start()
    import stacembed.pipeline  # noqa: F401  (imports torch, stackstac, ...: counted in the baseline)

    baseline, _ = peak_rss_self_mb()
    e2e = measure_e2e(Path(args.catalog), args.model, Path(args.out), args)
    e2e["rss_after_imports_mb"] = baseline
    e2e["peak_rss_mb"], e2e["peak_rss_source"] = peak_rss_self_mb()
    Path(args.result).write_text(json.dumps(e2e))


def measure_rss(catalog: Path, model: str, workdir: Path, args: argparse.Namespace) -> dict:
    """Peak RSS of one end-to-end run in a fresh Python process.

    The peak is ``ru_maxrss`` of that one child from ``os.wait4`` (what RUSAGE_CHILDREN gives
    for a single child; it covers the child's whole life, exit included). Linux carries
    ``ru_maxrss`` over fork/exec, so that number is at least this (parent) process's own peak;
    when it is not above it, it says nothing about the child, and the child's own ``VmHWM``
    (read at the end of its run) is reported instead, flagged in ``peak_rss_source``.
    """
    parent_peak, _ = peak_rss_self_mb()
    out = workdir / "out"
    result = workdir / "result.json"
    logfile = workdir / "child.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", "--catalog", str(catalog),
               "--model", model, "--out", str(out), "--result", str(result), "--batch-size", str(args.batch_size)]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    for key, value in args.set.items():
        command += ["--set", f"{key}={value}"]
    with open(logfile, "w") as stream:
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(logfile.read_text().splitlines()[-15:])
        raise BenchError(f"the RSS run on {catalog} failed (exit {child.returncode}):\n{tail}")
    measured = json.loads(result.read_text())
    measured["child_vmhwm_mb"] = measured.pop("peak_rss_mb")
    measured["ru_maxrss_wait4_mb"] = maxrss_mb(usage.ru_maxrss)
    measured["parent_peak_rss_mb"] = parent_peak
    if measured["ru_maxrss_wait4_mb"] > parent_peak + 1:
        measured["peak_rss_mb"], measured["peak_rss_source"] = measured["ru_maxrss_wait4_mb"], "wait4 ru_maxrss"
    else:
        measured["peak_rss_mb"] = measured["child_vmhwm_mb"]
        measured["peak_rss_source"] = f"child {measured['peak_rss_source']} (wait4 ru_maxrss masked by the parent)"
    shutil.rmtree(out, ignore_errors=True)
    return measured


# --------------------------------------------------------------------------------------------
# environment, output


def environment() -> dict:
    import dask
    import numpy
    import rasterio
    import stackstac
    import timm
    import torch

    import stacembed

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "stacembed": stacembed.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "stacembed")),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "timm": timm.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "numpy": numpy.__version__,
        "dask": dask.__version__,
        "stackstac": stackstac.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def warm_page_cache(catalog: Path) -> None:
    """Read every file once so that every measurement starts from the same (warm) page cache."""
    for path in catalog.parent.rglob("*.tif"):
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def _diff(values: list[float]) -> str:
    value = max(values)
    return "skipped" if value != value else f"{value:.1e}"


STREAMS_NOTE = " ({streams}x{torch_threads}t)"  # forward passes at once x torch threads each


def render(results: dict) -> str:
    env, params = results["environment"], results["parameters"]
    lines = [
        f"stacembed benchmark  {env['date']}  git {env['git_commit']}"
        f"{' +uncommitted stacembed/ changes' if env['git_dirty'] else ''}",
        f"machine: {env['cpus']} CPUs ({env['cpu']}), no GPU used; torch {env['torch']}, timm {env['timm']}, "
        f"rasterio {env['rasterio']} / GDAL {env['gdal']}, python {env['python']}",
        f"load average at start {env['load_average_start'][0]:.2f}, at end {results['load_average_end'][0]:.2f}"
        + ("  (other work was running: numbers are noisy)"
           if max(env['load_average_start'][0], results['load_average_end'][0]) > 0.5 * env['cpus'] else ""),
        f"data: {', '.join(f'{n} {s} x {s} px' for n, s in params['throughput_sides'].items())}, 6 bands (uint8 COG), "
        f"chips {params['chip']} px, "
        f"batch {params['batch_size']}, formats {'+'.join(FORMATS)}, repeats {params['repeat']} (medians shown)",
    ]
    startup = results.get("startup_seconds")
    if startup:
        lines.append("start-up, fresh interpreter: " + ", ".join(
            f"import {STARTUP_IMPORTS[k]} {v:.2f} s" for k, v in startup.items()))
    lines.append("")
    models = results["models"]
    names = list(models)
    width = max(24, *(len(n) + 2 for n in names))
    head = f"{'':44}" + "".join(f"{n:>{width}}" for n in names)
    lines.append(head)

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"{label:44}" + "".join(f"{c:>{width}}" for c in cells))

    def cell(m: dict, key: str, field: str = "chips_per_s", extra: str = "") -> str:
        runs = m[key]
        value = median_of(runs, field)
        if value != value:  # NaN: skipped
            return "skipped"
        note = extra.format(**runs[0]) if extra else ""
        return f"{value:,.1f}{note}"

    row("chips per item", [f"{models[n]['e2e'][0]['chips']:,}" for n in names])
    row("end-to-end stacembed.run   chips/s", [cell(models[n], "e2e", extra=STREAMS_NOTE) for n in names])
    row("  wall seconds", [f"{median_of(models[n]['e2e'], 'seconds'):.1f}" for n in names])
    row("  time to first batch, from stacembed.run  s", [f"{median_of(models[n]['e2e'], 'first_batch_s'):.2f}"
                                                          for n in names])
    row("compute bound, run's streams/threads   chips/s",
        [cell(models[n], "compute", extra=STREAMS_NOTE) for n in names])
    if any("compute_all_cores" in models[n] for n in names):
        row("compute, one pass on all cores (info)   chips/s",
            [cell(models[n], "compute_all_cores", extra=" ({torch_threads}t)") if "compute_all_cores" in models[n]
             else "-" for n in names])
    row("I/O bound, chip windows   chips/s", [cell(models[n], "io") for n in names])
    row("I/O, chip-row strips (info)   chips/s", [cell(models[n], "io", "strips_chips_per_s") for n in names])
    if any("read_path" in models[n] for n in names):
        row("stacembed read path, no model (info)   chips/s",
            [cell(models[n], "read_path") if "read_path" in models[n] else "-" for n in names])
    row("compute + reads sharing the cores (info)",
        [f"{models[n]['ratios']['shared_cores_chips_per_s']:,.1f}" for n in names])
    row("naive notebook loop   chips/s", [cell(models[n], "naive", extra=" ({torch_threads}t)") for n in names])
    row("max |e2e - naive| embedding", [_diff(models[n]["max_abs_diff"]) for n in names])
    lines.append("")
    for n in names:
        r = models[n]["ratios"]
        lines.append(
            f"{n}: e2e / min(compute, I/O) = {r['e2e_over_bound']:.2f}  (target >= {TARGET_BOUND_RATIO}: "
            f"{verdict(r['e2e_over_bound'] >= TARGET_BOUND_RATIO)}; bound = {r['bound']})"
            + (f";  e2e / naive = {r['e2e_over_naive']:.2f}" if r["e2e_over_naive"] == r["e2e_over_naive"] else "")
        )
        lines.append(f"{' ' * len(n)}  e2e / (compute + reads sharing the cores) = "
                     f"{r['e2e_over_shared_cores']:.2f}  (info)")
        paired = r.get("e2e_over_bound_per_repeat", [])
        if len(paired) > 1:
            lines.append(f"{' ' * len(n)}  each repeat against its own bounds: {', '.join(f'{x:.2f}' for x in paired)}")
    rss = results.get("rss")
    if rss:
        lines += ["", f"peak RSS, model {rss['model']}, each run in a fresh process:",
                  f"{'area':>6} {'side px':>8} {'chips':>8} {'wall s':>8} {'chips/s':>9} "
                  f"{'after imports MiB':>18} {'peak RSS MiB':>13} {'peak - imports':>15} {'VmHWM end of run':>17}"]
        for run in rss["runs"]:
            lines.append(
                f"{run['factor']:>5g}x {run['side']:>8} {run['chips']:>8,} {run['seconds']:>8.1f} "
                f"{run['chips_per_s']:>9.1f} {run['rss_after_imports_mb']:>18.0f} {run['peak_rss_mb']:>13.0f} "
                f"{run['peak_rss_mb'] - run['rss_after_imports_mb']:>15.0f} {run['child_vmhwm_mb']:>17.0f}"
            )
        if "growth" in rss:
            lines.append(
                f"peak RSS growth {rss['growth_from']:g}x -> {rss['growth_to']:g}x area = {rss['growth']:.2f}x  "
                f"(target < {TARGET_RSS_GROWTH}: {verdict(rss['growth'] < TARGET_RSS_GROWTH)}); "
                f"above the import baseline: {rss['growth_above_imports']:.2f}x"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="stacembed end-to-end throughput vs. compute/I/O bounds, naive baseline, and peak RSS.",
    )
    parser.add_argument("--base-size", type=int, default=2048, help="side in px of the 1x item (default 2048)")
    parser.add_argument("--throughput-size", type=int,
                        help="side in px of the throughput item, for every model (default: per model, so that "
                             "each runs for 10 s or more: demo 8192 px = 16,384 chips, others 4096 px = 4,096 chips)")
    parser.add_argument("--size-factors", default="1,4,16",
                        help="area factors for the peak-RSS runs (default 1,4,16); the first is the 1x reference")
    parser.add_argument("--models", default="demo,resnet18",
                        help=f"throughput models: {', '.join(MODELS)} or card paths/names (default demo,resnet18)")
    parser.add_argument("--rss-model", default="demo", help="model of the peak-RSS runs (default demo)")
    parser.add_argument("--batch-size", type=int, default=16, help="chips per forward pass everywhere (default 16)")
    parser.add_argument("--threads", type=int, help="pass --threads to stacembed (default: stacembed's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra RunConfig field for every stacembed run, e.g. --set prefetch=0 (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the throughput measurements, report medians")
    parser.add_argument("--skip-rss", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive baseline (and the embedding check)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also run each model once under cProfile (untimed) and write DIR/<model>.pstats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results as JSON")
    parser.add_argument("--data-dir", type=Path, default=bench_data.DATA, help="data cache (default benchmarks/.data)")
    # internal: the fresh process of a peak-RSS run
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sets = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--set needs KEY=VALUE, got {pair!r}")
        sets[key.strip()] = value.strip()
    args.set = sets
    try:
        args.factors = [float(f) for f in args.size_factors.split(",") if f.strip()]
    except ValueError:
        parser.error(f"--size-factors must be numbers, e.g. 1,4,16; got {args.size_factors!r}")
    if not args.factors or any(f <= 0 for f in args.factors):
        parser.error("--size-factors must be positive numbers")
    if min(args.base_size, args.throughput_size or 64) < 64:
        parser.error("--base-size and --throughput-size must be at least 64 px")
    if args.batch_size < 1 or args.repeat < 1:
        parser.error("--batch-size and --repeat must be >= 1")
    return args


def remove_stale_scratch() -> None:
    """Scratch directories of earlier benchmark processes that were killed (SIGKILL) before cleaning up."""
    for path in Path(tempfile.gettempdir()).glob("stacembed-bench-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log(f"removing {path}, left by a killed benchmark run")
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def shared_cores_rate(compute_rate: float, read_rate: float, cores: int) -> float:
    """Chips/s when the forward passes (on every core) and stacembed's reads (one thread) share
    ``cores`` perfectly: a chip costs ``cores / compute_rate`` core-seconds of model and
    ``1 / read_rate`` of reading, spread over all cores. Where the model takes every core
    (a CPU-only machine), no pipeline that reads its own pixels is faster than this."""
    return 1 / (1 / compute_rate + 1 / (read_rate * cores))


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_ref(name: str) -> str:
    return MODELS.get(name, name)


def throughput_side(name: str, args: argparse.Namespace) -> int:
    return args.throughput_size or THROUGHPUT_SIDES.get(name, DEFAULT_THROUGHPUT_SIDE)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return 0
    remove_stale_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"stacembed-bench-{os.getpid()}-"))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return benchmark(args, scratch)
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)


def benchmark(args: argparse.Namespace, scratch: Path) -> int:
    load_start = list(os.getloadavg())
    # The CPU configurations stacembed measures (``stacembed.calibration``) go to a cache of this
    # benchmark's own, not the user's: the first run of each model and chip size (an RSS child,
    # or the first end-to-end run) calibrates, as on a fresh machine; the runs after it use the choice.
    os.environ["STACEMBED_CACHE"] = str(scratch / "stacembed-cache")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise BenchError("--models names no model")
    preflight(models, scratch, args)
    base_side = args.base_size
    sides = {f: bench_data.side_for(base_side, f) for f in args.factors}
    throughput_sides = {name: throughput_side(name, args) for name in models}
    log(f"data: building/reusing "
        f"{', '.join(f'{s} px' for s in sorted(set(sides.values()) | set(throughput_sides.values())))} "
        f"in {args.data_dir}")
    throughput_catalogs = {side: bench_data.build_catalog(side, args.data_dir, log=log)  # the throughput items
                           for side in set(throughput_sides.values())}
    for name, build in ARTIFACTS.items():
        if any(model_ref(m) == MODELS[name] for m in models + [args.rss_model]):
            build(log=log)
    catalogs = {f: bench_data.build_catalog(side, args.data_dir, log=log) for f, side in sides.items()}

    # Peak RSS first, before the in-process runs make this process big (see measure_rss).
    rss: dict[str, Any] | None = None
    if not args.skip_rss:
        rss = measure_all_rss(catalogs, sides, scratch, args)

    import torch

    import stacembed

    default_threads = torch.get_num_threads()
    env = environment()
    env["load_average_start"] = load_start
    log("start-up: imports in fresh interpreters")
    startup = measure_startup()
    # Untimed warm-up on the bundled sample: imports, first-call costs, GDAL/PROJ database.
    log("warm-up: one untimed run on catalogs/sample")
    warm = scratch / "warmup"
    stacembed.run(run_config(ROOT / "catalogs" / "sample" / "catalog.json", model_ref(models[0]), warm, args))
    shutil.rmtree(warm, ignore_errors=True)
    torch.set_num_threads(default_threads)

    results: dict[str, Any] = {"environment": env, "parameters": {
        "base_side": base_side, "throughput_sides": throughput_sides, "batch_size": args.batch_size,
        "repeat": args.repeat, "threads": args.threads, "set": args.set, "formats": FORMATS,
        "models": {m: model_ref(m) for m in models},
    }, "startup_seconds": startup, "models": {}}
    for name in models:
        catalog = throughput_catalogs[throughput_sides[name]]
        warm_page_cache(catalog)
        results["models"][name] = measure_model(name, catalog, scratch, args, default_threads, results)
    if rss is not None:
        results["rss"] = rss
    results["load_average_end"] = list(os.getloadavg())
    results["targets"] = {"e2e_over_bound_min": TARGET_BOUND_RATIO, "rss_growth_max": TARGET_RSS_GROWTH}
    print(render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


def preflight(models: list[str], scratch: Path, args: argparse.Namespace) -> None:
    """Fail in seconds, not after the data build: every config and model card must load."""
    from stacembed.models import resolve_card

    for name in dict.fromkeys(models + ([] if args.skip_rss else [args.rss_model])):
        config = run_config(scratch / "preflight.json", model_ref(name), scratch / "preflight", args)
        resolve_card(config.model)


def measure_all_rss(catalogs: dict[float, Path], sides: dict[float, int], scratch: Path,
                    args: argparse.Namespace) -> dict[str, Any]:
    rss_ref = model_ref(args.rss_model)
    runs = []
    for factor in args.factors:
        catalog = catalogs[factor]
        warm_page_cache(catalog)
        log(f"peak RSS: {factor:g}x area ({sides[factor]} px) in a fresh process ...")
        workdir = scratch / f"rss-{factor:g}"
        workdir.mkdir()
        run = measure_rss(catalog, rss_ref, workdir, args)
        run.update(factor=factor, side=sides[factor])
        log(f"  {run['chips']} chips, {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MiB "
            f"(from {run['peak_rss_source']}; child VmHWM at end of run {run['child_vmhwm_mb']:.0f} MiB)")
        runs.append(run)
    rss: dict[str, Any] = {"model": rss_ref, "runs": runs}
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        rss.update(growth_from=first["factor"], growth_to=last["factor"],
                   growth=last["peak_rss_mb"] / first["peak_rss_mb"],
                   growth_above_imports=((last["peak_rss_mb"] - last["rss_after_imports_mb"])
                                         / max(1e-9, first["peak_rss_mb"] - first["rss_after_imports_mb"])))
    return rss


def measure_model(name: str, base_catalog: Path, scratch: Path, args: argparse.Namespace, default_threads: int,
                  results: dict) -> dict[str, Any]:
    import torch

    ref = model_ref(name)
    sub = subject(base_catalog, ref, args)
    results["parameters"]["chip"] = sub.chip
    entry: dict[str, Any] = {"model": sub.card.name, "e2e": [], "compute": [], "io": [], "naive": [],
                             "max_abs_diff": []}
    for rep in range(args.repeat):
        tag = f"{sub.card.name} [{rep + 1}/{args.repeat}]"
        out = scratch / f"out-{name}-{rep}"
        log(f"{tag} end-to-end stacembed.run ...")
        torch.set_num_threads(default_threads)
        e2e = measure_e2e(base_catalog, ref, out, args)
        entry["e2e"].append(e2e)
        log(f"{tag}   {e2e['chips']} chips in {e2e['seconds']:.1f} s = {e2e['chips_per_s']:.1f} chips/s "
            f"(torch threads {e2e['torch_threads']}, streams {e2e['streams']})")
        threads, streams = e2e["torch_threads"], e2e["streams"]
        log(f"{tag} compute bound ({streams} x {threads} threads) ...")
        entry["compute"].append(measure_compute(sub, e2e["chips"], args.batch_size, threads, streams))
        if (threads, streams) != (default_threads, 1):
            log(f"{tag} compute, one pass at a time on all {default_threads} threads (info) ...")
            entry.setdefault("compute_all_cores", []).append(
                measure_compute(sub, e2e["chips"], args.batch_size, default_threads))
        log(f"{tag} I/O bound ...")
        entry["io"].append(measure_io(sub))
        log(f"{tag} stacembed read path, no model (info) ...")
        entry.setdefault("read_path", []).append(measure_read_path(base_catalog, ref, args))
        if not args.skip_naive:
            # torch's default threads (every core), as in a notebook; how much of the ratio is
            # the run's thread setup alone shows in the "one pass at a time" compute row
            log(f"{tag} naive baseline ({default_threads} threads) ...")
            naive, embeddings = measure_naive(sub, args.batch_size, default_threads)
            entry["naive"].append(naive)
            entry["max_abs_diff"].append(compare_embeddings(out, embeddings))
        shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(default_threads)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        path = args.profile / f"{name}.pstats"
        log(f"{sub.card.name}: profiled run (untimed) -> {path}")
        out = scratch / f"out-{name}-profile"
        measure_e2e(base_catalog, ref, out, args, profile=path)
        shutil.rmtree(out, ignore_errors=True)
        torch.set_num_threads(default_threads)
    e2e_rate = median_of(entry["e2e"], "chips_per_s")
    compute_rate = median_of(entry["compute"], "chips_per_s")
    io_rate = median_of(entry["io"], "chips_per_s")
    bound = min(compute_rate, io_rate)
    shared = shared_cores_rate(compute_rate, median_of(entry["read_path"], "chips_per_s"), usable_cores())
    entry["ratios"] = {
        "bound": "compute" if compute_rate <= io_rate else "I/O",
        "e2e_over_bound": e2e_rate / bound,
        "e2e_over_compute": e2e_rate / compute_rate,
        "e2e_over_io": e2e_rate / io_rate,
        "shared_cores_chips_per_s": shared,
        "e2e_over_shared_cores": e2e_rate / shared,
        "e2e_over_naive": e2e_rate / median_of(entry["naive"], "chips_per_s") if entry["naive"] else float("nan"),
        # each repeat's run against its own bounds, measured next to it: shows how much of the
        # spread is load on a shared machine rather than the pipeline
        "e2e_over_bound_per_repeat": [
            e["chips_per_s"] / min(c["chips_per_s"], i["chips_per_s"])
            for e, c, i in zip(entry["e2e"], entry["compute"], entry["io"], strict=True)
        ],
    }
    if args.skip_naive:
        entry["naive"] = [{"chips_per_s": float("nan"), "torch_threads": entry["e2e"][0]["torch_threads"]}]
        entry["max_abs_diff"] = [float("nan")]
    return entry


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmark: interrupted", file=sys.stderr)
        sys.exit(130)
    except (BenchError, bench_data.DataError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        from stacembed import StacembedError

        if isinstance(exc, StacembedError):
            print(f"benchmark: error: stacembed: {exc}", file=sys.stderr)
            sys.exit(1)
        raise
