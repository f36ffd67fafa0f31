"""Nothing is lost and nothing is mixed up: full disks, damaged items, concurrent runs, colliding ids,
outputs that would overwrite inputs (issue 15, data safety)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
from conftest import make_catalog, make_item

from stacembed import RunConfig, run
from stacembed.embeddings import open_embeddings, read_geoparquet
from stacembed.errors import ConfigError, OutputError, ResolveError
from stacembed.layout import is_temporary

SAMPLE = Path(__file__).resolve().parents[1] / "catalogs" / "sample" / "catalog.json"


def _config(out: Path, **values) -> RunConfig:
    return RunConfig(out=out, catalog=str(values.pop("catalog", SAMPLE)), weights="random", progress=False, **values)


def _stacembed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stacembed", *map(str, args)], capture_output=True, text=True)


def _assert_readable(out: Path) -> None:
    """Every item of the catalog opens completely with rasterio and pyarrow."""
    for item in open_embeddings(out):
        with rasterio.open(item.hrefs["geotiff"]) as ds:
            ds.read()
        read_geoparquet(item.hrefs["geoparquet"])


def _can_mount_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_one_line_and_the_rerun_finishes_with_every_item_whole(tmp_path):
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root and tmpfs (CI runs as root); the simulated ENOSPC test covers the logic")
    try:
        out = disk / "out"
        failed = _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", out, "-q")
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        # libtiff (inside GDAL) may print its own "_tiffSeekProc: No space left on device." lines
        # straight to the C stderr first; stacembed's own word is one line, the last.
        errors = [line for line in failed.stderr.splitlines() if line.startswith("stacembed:")]
        assert errors == [failed.stderr.strip().splitlines()[-1]] and "no space left" in errors[0]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        done = _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", out)
        assert done.returncode == 0, done.stderr
        _assert_readable(out)
        assert not [p for p in out.rglob(".*") if is_temporary(p)]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_write_that_runs_out_of_space_keeps_finished_items_and_the_rerun_completes(tmp_path, monkeypatch):
    from stacembed.writers.cog import CogWriter

    original, calls = CogWriter.close, []

    def close(self):
        calls.append(self.path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self)

    monkeypatch.setattr(CogWriter, "close", close)
    with pytest.raises(OutputError, match="no space left on the device"):
        run(_config(tmp_path / "out"))
    finished = sorted(p.parent.name for p in (tmp_path / "out").glob("*/*/*.tif"))
    assert len(finished) == 1 and not [p for p in (tmp_path / "out").rglob(".*") if is_temporary(p)]
    monkeypatch.setattr(CogWriter, "close", original)
    summary = run(_config(tmp_path / "out"))
    assert summary.items_resumed == finished and len(summary.items_done) == 3
    _assert_readable(tmp_path / "out")


def test_resume_verifies_what_it_keeps(tmp_path, caplog):
    out = tmp_path / "out"
    run(_config(out))
    tif = sorted(out.glob("*/*/*.tif"))[0]
    damaged = tif.parent.name
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])  # a truncated COG
    summary = run(_config(out))
    assert summary.items_done == [damaged] and damaged not in summary.items_resumed
    assert "damaged" in caplog.text
    _assert_readable(out)
    # Same size, other bytes: only --verify (checksums) sees it.
    parquet = sorted(out.glob("*/*/*.parquet"))[1]
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    assert parquet.parent.name in run(_config(out)).items_resumed
    assert run(_config(out, verify=True)).items_done == [parquet.parent.name]
    _assert_readable(out)


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from stacembed.layout import exclusive\n"
         f"with exclusive(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", out, "-q")
        assert second.returncode == 1 and "another stacembed run is writing to" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert not list(out.iterdir())  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", out, "-q").returncode == 0


def _two_collections(root: Path) -> Path:
    """A catalog of collections ``a`` and ``b``, each with an item ``item-0`` (other pixels)."""
    for seed, name in ((1, "a"), (2, "b")):
        item = make_item(root, "item-0", dialect="1.1", origin=(500000.0, 9100000.0), shape=(64, 64),
                         seed=seed, collection=name)
        make_catalog(root, [item], collection=name)
    catalog = json.loads((root / "catalog.json").read_text())
    catalog["links"] = [{"rel": "root", "href": "./catalog.json"}, {"rel": "child", "href": "./a/collection.json"},
                        {"rel": "child", "href": "./b/collection.json"}]
    (root / "catalog.json").write_text(json.dumps(catalog))
    return root / "catalog.json"


def test_items_with_one_id_in_two_collections_are_both_embedded(tmp_path):
    catalog = _two_collections(tmp_path / "src")
    out = tmp_path / "out"
    summary = run(_config(out, catalog=catalog, chip_size=32))
    assert summary.items_done == ["item-0", "item-0"] and len(summary.collection_ids) == 2
    items = list(open_embeddings(out))
    assert sorted(i.collection_id for i in items) == sorted(summary.collection_ids)
    first, second = (read_geoparquet(i.hrefs["geoparquet"])[1] for i in items)
    assert first.shape == second.shape and (first != second).any()  # two items, not one twice
    root = json.loads((out / "catalog.json").read_text())
    assert sorted(link["href"] for link in root["links"] if link["rel"] == "child") == \
        sorted(f"./{c}/collection.json" for c in summary.collection_ids)
    with pytest.raises(ResolveError, match="drop --output-collection"):
        run(_config(tmp_path / "out2", catalog=catalog, chip_size=32, output_collection="together"))


def test_an_out_that_would_overwrite_an_input_is_refused(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(SAMPLE.parent, source)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    done = _stacembed("run", "--catalog", source / "catalog.json", "--weights", "random", "--out", source, "-q")
    assert done.returncode == 1 and "would overwrite the input" in done.stderr
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_an_output_collection_is_one_plain_directory_name(tmp_path):
    with pytest.raises(ConfigError, match="not a plain directory name"):
        run(_config(tmp_path / "deep" / "out", output_collection="../.."))
    assert not (tmp_path / "deep").exists()


def test_temporaries_of_dead_runs_are_cleaned_everywhere_the_run_writes(tmp_path):
    out = tmp_path / "out"
    summary = run(_config(out))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    collection = out / summary.collection_ids[0]
    stale = [out / f".catalog.json.{dead}.tmp", collection / "model" / f".card.json.{dead}.tmp",
             collection / f".items.parquet.{dead}.tmp", collection / ".parts-x-0" / f".rows.arrows.{dead}.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_text("stale")
    alive = out / f".catalog.json.{os.getpid()}.tmp"
    alive.write_text("mine")
    run(_config(out))
    assert not any(p.exists() for p in stale) and alive.exists()


def test_a_rerun_that_changes_nothing_writes_nothing(tmp_path):
    out = tmp_path / "out"
    run(_config(out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    time.sleep(0.01)
    summary = run(_config(out))
    assert summary.items_done == [] and len(summary.items_resumed) == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_rerun_into_a_read_only_finished_out_succeeds(tmp_path):
    out, read_only = tmp_path / "out", tmp_path / "ro"
    assert _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", out, "-q").returncode == 0
    read_only.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(out), str(read_only)]).returncode:
        pytest.skip("needs root to bind-mount read-only (CI runs as root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        done = _stacembed("run", "--catalog", SAMPLE, "--weights", "random", "--out", read_only)
        assert done.returncode == 0, done.stderr
        assert "0 item(s) embedded" in done.stdout and "4 already done" in done.stdout
    finally:
        subprocess.run(["umount", str(read_only)], check=False)
