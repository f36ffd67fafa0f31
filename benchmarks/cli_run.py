"""`stacembed run` from the shell against the best compute bound: start-up included.

    python benchmarks/cli_run.py [--models vit-s16,prithvi-tiny,resnet18,demo] [--repeat 2] [--json PATH]

For each model, on its throughput item (``SIDES``: ~30 s of ViT-S/16 work on 2 cores):

- ``cli first``: ``stacembed run ... --format geoparquet --device cpu`` in a fresh process (the
  ``stacembed`` command of the interpreter that runs this script, as a user types it) with an
  empty ``STACEMBED_CACHE``: wall time of the whole process (interpreter, imports, model build,
  calibration of the CPU configuration, reads, writes, catalog, exit);
- ``cli cached``: the same command again, with the calibration it cached (what later runs
  see); repeated ``--repeat`` times;
- ``bound 1 x N`` and ``bound N x 1``: the model's ``Embedder`` (value scaling included) on as
  many chips, read into memory before the clock starts (the item's own first batches, reused
  past 256 MiB), one pass at a time on all N cores, and N single-threaded passes side by side
  (``concurrency.ordered_map``); the **best bound** is the faster of the two. Each repeat measures
  both right after its ``cli cached`` run, so that load on a shared machine hits both alike;
  the ratio of each repeat is reported with the medians.
- ``reads``: the item's reads alone (every chip, as the run reads them, no model), CPU seconds;
  ``cli / (best bound + reads)`` compares the run with the bound plus that CPU spread over the
  cores: the part of the gap that decoding the pixels explains, which no run on these cores avoids;
- time to the first batch (from the process's start, from the run's log) and the CPU
  configuration the run used;
- peak RSS (``ru_maxrss`` of the CLI process, from ``os.wait4``) at 1x, 4x and 16x the area of
  ``--base-size`` (2048 px), each in a fresh process, before this process imports torch.

The install measured is recorded (``install``): run this script with the Python of a user's
install (``pip install .`` in a fresh venv: byte-compiled, no test extras) to time what users
run. A development checkout differs in ways that only slow its start-up: with
``PYTHONDONTWRITEBYTECODE`` set, an editable install compiles stacembed's sources in every
process, and test extras add imports (rasterio imports boto3 when moto brought it in; torch
imports pydot when cwltool did).

Target: cli cached / best bound >= 0.9 for the transformers (issue 20). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
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
BUILD = {"resnet18": bench_data.build_resnet18_weights, "vit-s16": bench_data.build_vit_s16_weights,
         "prithvi-tiny": bench_data.build_prithvi_tiny_artifact}
# Item sides: ~30 s of compute on 2 cores for each transformer (issue 20): ViT-S/16 625 chips of
# 224 px, the tiny Prithvi 3,844 (its forward pass is ~6x cheaper per chip); the 64 px models
# 16,384 chips.
SIDES = {"vit-s16": 5600, "prithvi-tiny": 13888, "resnet18": 8192, "demo": 8192}
TARGET = 0.9
CONFIGURATION = re.compile(r"(\d+) streams? x (\d+) threads?, batches of (\d+)")
TRANSFORMERS = ("vit-s16", "prithvi-tiny")
FIRST_BATCH = re.compile(r"first batch embedded ([\d.]+) s after the run started(?: \(([\d.]+) s after the process)?")
CPU_CONFIGURATION = re.compile(r"CPU configuration: (.*)$", re.M)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stacembed_command() -> list[str]:
    """The ``stacembed`` command installed next to this interpreter (``python -m stacembed``
    when there is none)."""
    script = Path(sys.executable).parent / "stacembed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stacembed"]


def install() -> dict[str, Any]:
    """What the CLI runs: where stacembed is imported from, whether its modules are byte-compiled
    (an up-to-date ``.pyc`` beside each), and the test extras' packages that add imports."""
    package = Path(importlib.util.find_spec("stacembed").origin).parent
    sources = list(package.rglob("*.py"))
    compiled = sum(_compiled(path) for path in sources)
    return {"command": stacembed_command(), "python": sys.executable, "stacembed": str(package),
            "editable": package.is_relative_to(ROOT), "modules": len(sources), "byte_compiled": compiled,
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "test_packages": [m for m in ("boto3", "pydot", "moto", "cwltool") if importlib.util.find_spec(m)]}


def _compiled(source: Path) -> bool:
    cached = Path(importlib.util.cache_from_source(str(source)))
    return cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime


def cli_run(catalog: Path, model: str, out: Path, cache: Path, extra: list[str] = ()) -> dict[str, Any]:
    """One ``stacembed run`` in a fresh process: wall seconds, peak RSS, first batch, configuration.
    It runs in ``out``'s directory, so that a ``python -m`` fallback imports the installed stacembed,
    not this checkout's."""
    command = [*stacembed_command(), "run", "--catalog", str(catalog), "--model", model,
               "--format", "geoparquet", "--device", "cpu", "--offline", "--out", str(out), "-v", *extra]
    env = {**os.environ, "STACEMBED_CACHE": str(cache)}
    logfile = out.parent / f"{out.name}.log"
    with open(logfile, "w") as stream:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=out.parent, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    text = logfile.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stacembed run failed:\n{text[-3000:]}")
    chips = sum(int(n) for n in re.findall(r": (\d+) chips embedded", text))
    first = FIRST_BATCH.search(text)
    configuration = CPU_CONFIGURATION.findall(text)
    shutil.rmtree(out, ignore_errors=True)
    return {"chips": chips, "seconds": seconds, "chips_per_s": chips / seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "first_batch_s": float(first.group(1)) if first else None,
            "first_batch_from_process_s": float(first.group(2)) if first and first.group(2) else None,
            "cpu_configuration": configuration[-1] if configuration else None}


def first_batches(catalog: Path, model: str, batch: int, memory_mb: int = 256):
    """The item's first batches as contiguous float32 arrays (at most ``memory_mb``), and the card."""
    import numpy as np

    from stacembed import RunConfig
    from stacembed.job import Inputs

    config = RunConfig(catalog=str(catalog), model=model, out=Path(tempfile.gettempdir()) / "unused",
                       batch_size=batch, offline=True, device="cpu")
    inputs = Inputs.resolve(config)
    spec = inputs.feed_spec(inputs.plan_item(inputs.series[0]), batch)
    kept = []
    for read in spec.batches():
        if len(read.chips) != batch:
            break
        kept.append(np.ascontiguousarray(read.pixels))
        if len(kept) * kept[0].nbytes >= memory_mb * 2**20:
            break
    return inputs, kept


def measure_bound(inputs, batches: list, chips: int, streams: int, threads: int, batch: int) -> dict[str, Any]:
    """``Embedder`` passes of ``batch`` chips over ``chips`` chips of ``batches`` (reused; ``batch`` divides
    their length), ``streams`` x ``threads``."""
    import torch

    from stacembed.concurrency import ordered_map
    from stacembed.embed import Embedder
    from stacembed.models.weights import resolve_weights

    torch.set_num_threads(threads)
    weights = resolve_weights(inputs.card, None, offline=True)
    embedder = Embedder.from_card(inputs.card, weights, torch.device("cpu"), chip_size=inputs.chip_size,
                                  streams=streams)
    batches = [whole[i:i + batch] for whole in batches for i in range(0, len(whole), batch)]
    sizes = [min(batch, chips - first) for first in range(0, chips, batch)]
    for _ in ordered_map(embedder, batches[:streams], streams):  # warm-up, untimed
        pass
    start, cpu = time.perf_counter(), time.process_time()
    for _ in ordered_map(embedder, (batches[i % len(batches)][:n] for i, n in enumerate(sizes)), streams, 1):
        pass
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"chips": chips, "seconds": seconds, "chips_per_s": chips / seconds, "cpu_seconds": cpu,
            "streams": streams, "threads": threads, "batch": batch}


def measure_reads(inputs) -> dict[str, Any]:
    """The item's reads alone, in this thread: every chip of it, as the run reads them (the feed
    in line, no model), wall and CPU seconds. What a run must do on the cores besides the bound's
    forward passes, however it overlaps them."""
    spec = inputs.feed_spec(inputs.plan_item(inputs.series[0]), 16)
    start, cpu, chips = time.perf_counter(), time.process_time(), 0
    for read in spec.batches():
        chips += len(read.chips)
    return {"chips": chips, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def bound_batches(default: int, run: dict[str, Any]) -> list[int]:
    """Batch sizes the bounds try: ``--batch-size`` and the one the CLI run used, when it divides it
    (the calibration halves the batch), so that the bound is never weaker than the run's choice."""
    match = CONFIGURATION.match(run.get("cpu_configuration") or "")
    used = int(match.group(3)) if match else None
    return sorted({default} | ({used} if used and default % used == 0 else set()), reverse=True)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"benchmark: error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name in set(names) | set(args.rss_models.split(",") if args.rss_models else ()):
        if name in BUILD:
            BUILD[name](log=log)
    results: dict[str, Any] = {"load_average_start": list(os.getloadavg()), "cores": cores(), "install": install(),
                               "models": {}, "rss": {}, "parameters": vars(args) | {"json": str(args.json)}}
    # Peak RSS first, while this process is small (Linux carries ru_maxrss over fork/exec).
    for name in [m for m in (args.rss_models or "").split(",") if m]:
        runs = []
        for factor in (1, 4, 16):
            side = bench_data.side_for(args.base_size, factor)
            catalog = bench_data.build_catalog(side, args.data_dir, log=log)
            log(f"{name}: peak RSS at {factor}x ({side} px) ...")
            cache = scratch / f"cache-rss-{name}"  # the key holds the chip shape, not the area: one calibration
            if factor == 1:
                cli_run(catalog, MODELS[name], scratch / f"rss-{name}-{factor}", cache)
            run = cli_run(catalog, MODELS[name], scratch / f"rss-{name}-{factor}", cache)
            run.update(factor=factor, side=side)
            log(f"  {run['chips']} chips, {run['seconds']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MiB")
            runs.append(run)
        results["rss"][name] = {"runs": runs, "growth": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]}
    n = cores()
    for name in names:
        side = args.side or SIDES[name]
        catalog = bench_data.build_catalog(side, args.data_dir, log=log)
        for path in catalog.parent.rglob("*.tif"):  # warm the page cache
            path.read_bytes()
        cache = scratch / f"cache-{name}"
        entry: dict[str, Any] = {"side": side, "cached": [], "bound_1xN": [], "bound_Nx1": []}
        log(f"{name}: first run, calibrating ...")
        entry["first"] = cli_run(catalog, MODELS[name], scratch / f"out-{name}", cache)
        first = entry["first"]
        log(f"  {first['chips']} chips in {first['seconds']:.1f} s; {first['cpu_configuration']}")
        inputs, batches = first_batches(catalog, MODELS[name], args.batch_size)
        chips = entry["first"]["chips"]
        for rep in range(args.repeat):
            run = cli_run(catalog, MODELS[name], scratch / f"out-{name}", cache)
            entry["cached"].append(run)
            log(f"  [{rep + 1}/{args.repeat}] cached: {run['seconds']:.1f} s = {run['chips_per_s']:.1f} chips/s, "
                f"first batch {run['first_batch_from_process_s']} s; {run['cpu_configuration']}")
            order = [("bound_1xN", 1, n), ("bound_Nx1", min(n, 4), max(1, n // min(n, 4)))]
            for key, streams, threads in (order if rep % 2 == 0 else order[::-1]):
                bound = max((measure_bound(inputs, batches, chips, streams, threads, size)
                             for size in bound_batches(args.batch_size, run)), key=lambda b: b["chips_per_s"])
                entry[key].append(bound)
                log(f"  [{rep + 1}/{args.repeat}] bound {streams}x{threads} b{bound['batch']}: "
                    f"{bound['chips_per_s']:.1f} chips/s")
        entry["reads"] = measure_reads(inputs)
        log(f"  reads alone: {entry['reads']['cpu_seconds']:.2f} CPU s")
        best = [max(a["chips_per_s"], b["chips_per_s"]) for a, b in zip(entry["bound_1xN"], entry["bound_Nx1"],
                                                                           strict=True)]
        entry["best_bound_per_repeat"] = best
        entry["ratio_per_repeat"] = [c["chips_per_s"] / b for c, b in zip(entry["cached"], best, strict=True)]
        entry["ratio"] = statistics.median(c["chips_per_s"] for c in entry["cached"]) / statistics.median(best)
        entry["first_ratio"] = entry["first"]["chips_per_s"] / statistics.median(best)
        # The bound with the reads' CPU added on the same cores: what no run that decodes its
        # pixels on these cores can beat (start-up and the single-threaded parts still count).
        with_reads = chips / (chips / statistics.median(best) + entry["reads"]["cpu_seconds"] / n)
        entry["ratio_with_reads"] = statistics.median(c["chips_per_s"] for c in entry["cached"]) / with_reads
        results["models"][name] = entry
    results["load_average_end"] = list(os.getloadavg())
    return results


def render(results: dict[str, Any]) -> str:
    med = statistics.median
    setup = results["install"]
    lines = [f"{results['cores']} cores; load average {results['load_average_start'][0]:.2f} at the start, "
             f"{results['load_average_end'][0]:.2f} at the end"
             + ("  (other work was running: numbers are noisy)"
                if max(results['load_average_start'][0], results['load_average_end'][0]) > 0.5 * results['cores']
                else ""),
             f"stacembed from {setup['stacembed']} ({'editable' if setup['editable'] else 'installed'}; "
             f"{setup['byte_compiled']}/{setup['modules']} modules byte-compiled; test packages: "
             f"{', '.join(setup['test_packages']) or 'none'})"]
    models = results["models"]
    if models:
        names = list(models)
        width = 22
        lines.append(f"{'':46}" + "".join(f"{n:>{width}}" for n in names))

        def row(label: str, cells: list[str]) -> None:
            lines.append(f"{label:46}" + "".join(f"{c:>{width}}" for c in cells))

        row("item side px / chips", [f"{models[n]['side']} / {models[n]['first']['chips']:,}" for n in names])
        row("cli, first run (calibrates)  chips/s", [f"{models[n]['first']['chips_per_s']:.1f}" for n in names])
        row("  wall s", [f"{models[n]['first']['seconds']:.1f}" for n in names])
        row("cli, cached configuration  chips/s", [f"{med(r['chips_per_s'] for r in models[n]['cached']):.1f}"
                                                   for n in names])
        row("  wall s", [f"{med(r['seconds'] for r in models[n]['cached']):.1f}" for n in names])
        row("  first batch, from process start  s",
            [f"{med(r['first_batch_from_process_s'] or float('nan') for r in models[n]['cached']):.2f}"
             for n in names])
        row("  configuration", [_short(models[n]["cached"][-1]["cpu_configuration"]) for n in names])
        row("bound, 1 pass x all cores  chips/s", [f"{med(r['chips_per_s'] for r in models[n]['bound_1xN']):.1f}"
                                                   for n in names])
        row("bound, N passes x 1 thread  chips/s", [f"{med(r['chips_per_s'] for r in models[n]['bound_Nx1']):.1f}"
                                                    for n in names])
        row("best bound  chips/s", [f"{med(models[n]['best_bound_per_repeat']):.1f}" for n in names])
        row("cli cached / best bound", [f"{models[n]['ratio']:.2f}" for n in names])
        row("  per repeat", [", ".join(f"{x:.2f}" for x in models[n]["ratio_per_repeat"]) for n in names])
        row("cli first run / best bound", [f"{models[n]['first_ratio']:.2f}" for n in names])
        row("reads alone, all chips  CPU s", [f"{models[n]['reads']['cpu_seconds']:.2f}" for n in names])
        row("cli cached / (best bound + reads)", [f"{models[n]['ratio_with_reads']:.2f}" for n in names])
        # CPU time is what load on a shared machine distorts least: the share of the CLI's CPU
        # that the passes of the fastest bound needed (the rest: imports, reads, writes, exit;
        # wall time adds the single-threaded start-up and the tail on top)
        row("CPU s: cli cached / best bound", [f"{med(r['cpu_seconds'] for r in models[n]['cached']):.1f} / "
                                               f"{_best_cpu(models[n]):.1f}" for n in names])
        row("best bound CPU / cli CPU", [
            f"{_best_cpu(models[n]) / med(r['cpu_seconds'] for r in models[n]['cached']):.2f}" for n in names])
        for n in names:
            if n in TRANSFORMERS:
                ok = models[n]["ratio"] >= TARGET
                lines.append(f"{n}: cli cached / best bound = {models[n]['ratio']:.2f} "
                             f"(target >= {TARGET}: {'meets' if ok else 'MISSES'} target)")
    for name, rss in results["rss"].items():
        lines.append(f"peak RSS {name}, CLI process (ru_maxrss): " + " / ".join(
            f"{r['factor']}x {r['peak_rss_mb']:.0f} MiB ({r['chips']:,} chips)" for r in rss["runs"])
            + f"; growth 1x -> 16x {rss['growth']:.2f}x")
    return "\n".join(lines)


def _best_cpu(entry: dict[str, Any]) -> float:
    """CPU seconds of the faster bound configuration (by median chips/s)."""
    med = statistics.median
    faster = max(("bound_1xN", "bound_Nx1"), key=lambda k: med(r["chips_per_s"] for r in entry[k]))
    return med(r.get("cpu_seconds", float("nan")) for r in entry[faster])


def _short(text: str | None) -> str:
    match = CONFIGURATION.match(text or "")
    return f"{match.group(1)}x{match.group(2)} b{match.group(3)}" if match else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/cli_run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit-s16,prithvi-tiny,resnet18,demo", help=f"of {', '.join(MODELS)}")
    parser.add_argument("--repeat", type=int, default=2, help="cached CLI runs, each paired with both bounds")
    parser.add_argument("--side", type=int, help="item side in px for every model (default: SIDES)")
    parser.add_argument("--batch-size", type=int, default=16, help="chips per pass of the bounds (default 16)")
    parser.add_argument("--rss-models", default="vit-s16,demo", help="models of the 1x/4x/16x peak-RSS runs")
    parser.add_argument("--base-size", type=int, default=2048, help="side of the 1x RSS item (default 2048)")
    parser.add_argument("--data-dir", type=Path, default=bench_data.DATA)
    parser.add_argument("--json", type=Path, help="write every measurement as JSON")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix=f"stacembed-bench-{os.getpid()}-cli-"))
    try:
        results = benchmark(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
