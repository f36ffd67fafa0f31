"""A rerun into the same --out resumes: finished items are kept as they are, none is duplicated."""

import json
import os
import signal
import subprocess
import sys
import time

import duckdb

from stacembed.layout import is_temporary


def _items(out):
    return sorted(p for p in out.glob("*/*/*.json") if p.parent.name != "model")


def test_rerun_skips_finished_items_and_adds_new_ones(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=3, shape=(64, 64))
    out = tmp_path / "out"
    first = cli("run", "--catalog", catalog, "--out", out, "--max-items", "1", "-q")
    assert first.exit_code == 0, first.output
    (done,) = _items(out)
    stamp = done.stat().st_mtime_ns
    second = cli("run", "--catalog", catalog, "--out", out)
    assert second.exit_code == 0, second.output
    assert "2 item(s) embedded" in second.output and "1 already done" in second.output
    assert done.stat().st_mtime_ns == stamp
    assert [p.stem for p in _items(out)] == ["item-0", "item-1", "item-2"]
    collection = json.loads(next(out.glob("*/collection.json")).read_text())
    item_links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(item_links) == len(set(item_links)) == 3
    rows = duckdb.sql(f"select count(*), count(distinct id) from '{next(out.glob('*/items.parquet'))}'").fetchall()[0]
    assert rows == (3, 3)


def test_rerun_with_other_parameters_is_refused(synthetic_catalog, cli, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=1, shape=(64, 64))
    out = tmp_path / "out"
    assert cli("run", "--catalog", catalog, "--out", out, "-q").exit_code == 0
    again = cli("run", "--catalog", catalog, "--out", out, "--chip-size", "32")
    assert again.exit_code == 1
    assert "made with other parameters (chip_size, stride)" in again.output


def test_killed_run_resumes_without_duplicates(synthetic_catalog, tmp_path):
    catalog = synthetic_catalog("1.1", n_items=4, shape=(256, 256))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stacembed", "run", "--catalog", str(catalog), "--out", str(out),
           "--chip-size", "32", "--batch-size", "4", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not _items(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the hard case
    proc.wait()
    # The embeddings of items the killed run finished are kept as they are (their item JSON gains
    # the quicklook assets, which only the end of a run draws).
    finished_before = {p.stem: p.with_suffix(".parquet").stat().st_mtime_ns for p in _items(out)}
    assert not (out / "catalog.json").exists() or len(finished_before) == 4
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after = {p.stem: p.with_suffix(".parquet").stat().st_mtime_ns for p in _items(out)}
    assert sorted(after) == ["item-0", "item-1", "item-2", "item-3"]
    assert all(after[k] == v for k, v in finished_before.items())
    assert not [p for p in out.glob("*/.*") if is_temporary(p)], "temporary directories must be cleaned up"
    for parquet in out.glob("*/item-*/item-*.parquet"):
        count, distinct = duckdb.sql(f"select count(*), count(distinct id) from '{parquet}'").fetchall()[0]
        assert count == distinct > 0
