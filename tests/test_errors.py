"""Bad input: one clear line, a non-zero exit, no traceback, and nothing left in --out."""

import json
import subprocess
import sys

import pytest
from conftest import DEMO_CARD


def run_cli(*args):
    """The real console entry point in a subprocess, as a user meets it."""
    return subprocess.run([sys.executable, "-m", "stacembed", *map(str, args)], capture_output=True, text=True)


def assert_clean_failure(result, out, fragment):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stacembed: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() or not any(out.rglob("*.json")), sorted(out.rglob("*"))


def _break_asset(catalog, mode):
    tif = catalog.parent / "synthetic" / "item-0" / "B3.tif"
    if mode == "missing":
        tif.unlink()
    else:
        tif.write_bytes(tif.read_bytes()[:300])  # a truncated, corrupt GeoTIFF


CASES = {
    "unknown collection": (["--collection", "nope"], "collection 'nope' not found"),
    "no items matched": (["--bbox", "10,10,11,11"], "no items matched"),
    "malformed bbox": (["--bbox", "1,2,3"], "--bbox must be four numbers"),
    "malformed datetime": (["--datetime", "last tuesday"], "--datetime"),
    "unreadable card": (["--model", "/nonexistent/card.json"], "model card /nonexistent/card.json does not exist"),
    "missing catalog": (["--catalog", "/nonexistent/catalog.json"], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(synthetic_catalog, tmp_path, case):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 40))
    extra, fragment = CASES[case]
    args = ["run", "--out", tmp_path / "out"]
    if "--catalog" not in extra:
        args += ["--catalog", catalog]
    assert_clean_failure(run_cli(*args, *extra), tmp_path / "out", fragment)


@pytest.mark.parametrize("mode,fragment", [("missing", "cannot read raster"), ("corrupt", "cannot read raster")])
def test_unreadable_asset(synthetic_catalog, tmp_path, mode, fragment):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 40))
    _break_asset(catalog, mode)
    out = tmp_path / "out"
    assert_clean_failure(run_cli("run", "--catalog", catalog, "--out", out), out, fragment)


def test_missing_band(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 40))
    card = json.loads(DEMO_CARD.read_text())
    card["properties"]["mlm:input"][0]["bands"][0] = "coastal"
    card["assets"]["weights"]["href"] = str(DEMO_CARD.with_suffix(".safetensors"))
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    result = run_cli("run", "--catalog", catalog, "--model", tmp_path / "card.json", "--out", out)
    assert_clean_failure(result, out, "has no band 'coastal'")


def test_card_without_weights_needs_an_explicit_choice(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 40))
    card = json.loads(DEMO_CARD.read_text())
    card["assets"]["weights"]["href"] = "https://example.invalid/weights.safetensors"
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "stacembed", "run", "--catalog", str(catalog), "--model", str(tmp_path / "card.json"),
         "--out", str(out)], capture_output=True, text=True,
        env={**__import__("os").environ, "STACEMBED_OFFLINE": "1", "STACEMBED_CACHE": str(tmp_path / "cache")},
    )
    assert_clean_failure(result, out, "not in the cache and downloads are off")


def test_traceback_only_with_verbose(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(40, 40))
    result = run_cli("run", "--catalog", catalog, "--collection", "nope", "--out", tmp_path / "o", "-v")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_closed_pipe_stops_a_listing_quietly():
    """`stacembed models list | head -1`: the reader leaves early; no traceback on stderr."""
    import subprocess
    import sys

    shell = f"{sys.executable} -m stacembed models list | head -1"
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {shell}"], capture_output=True, text=True)
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


QUICK_EXIT = """
import atexit, sys, threading, time
from pathlib import Path
from stacembed.cli import quick_exit

out = Path(sys.argv[1])
atexit.register(lambda: (out / "handler").write_text("ran"))

def late():
    time.sleep(0.3)
    (out / "thread").write_text("done")

threading.Thread(target=late).start()
sys.stdout.write("x" * 200_000)  # buffered: must be flushed
code = sys.argv[2]
quick_exit(int(code) if code.isdigit() else None if code == "none" else code)
"""


@pytest.mark.parametrize(("code", "status"), [("0", 0), ("3", 3), ("none", 0), ("stopped here", 1)])
@pytest.mark.parametrize("quick", ["1", "0"])
def test_the_quick_exit_keeps_what_pythons_exit_guarantees(tmp_path, code, status, quick):
    """The program ends without the interpreter's teardown (``cli.quick_exit``), and otherwise as
    Python ends: threads that are not daemons finish, exit handlers run, buffered output is all
    written, the status (or message) is the one given; ``STACEMBED_QUICK_EXIT=0`` exits as Python."""
    import os

    done = subprocess.run([sys.executable, "-c", QUICK_EXIT, str(tmp_path), code], capture_output=True, text=True,
                          env={**os.environ, "STACEMBED_QUICK_EXIT": quick})
    assert done.returncode == status, done.stderr
    assert done.stdout == "x" * 200_000
    assert (tmp_path / "handler").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    assert done.stderr.strip() == ("stopped here" if code == "stopped here" else "")
