"""MemoryTrimmer: trims only when resident memory grew past its slack, re-baselines after."""

import sys

import numpy as np
import pytest

from stacembed import memory
from stacembed.memory import MemoryTrimmer, resident_bytes

MiB = 2**20


@pytest.fixture
def fake_process(monkeypatch):
    """A process whose RSS the test sets, and a malloc_trim that records its calls."""
    state = {"rss": 500 * MiB, "trims": 0}

    def trim(pad):
        state["trims"] += 1
        state["rss"] = 500 * MiB  # what trimming gives back
        return 1

    monkeypatch.setattr(memory, "resident_bytes", lambda: state["rss"])
    monkeypatch.setattr(memory, "_malloc_trim", trim)
    return state


def test_trims_only_past_the_slack(fake_process):
    trimmer = MemoryTrimmer(slack=64 * MiB)
    assert trimmer.check() is False  # the first check sets the baseline
    fake_process["rss"] += 64 * MiB
    assert trimmer.check() is False  # at the slack, not past it
    fake_process["rss"] += 1
    assert trimmer.check() is True
    assert (fake_process["trims"], trimmer.trims) == (1, 1)


def test_rebaselines_after_a_trim_so_a_large_working_set_is_not_trimmed_every_batch(fake_process):
    trimmer = MemoryTrimmer(slack=64 * MiB)
    trimmer.check()
    fake_process["rss"] = 700 * MiB  # a batch's working set (torch activations) of 200 MiB
    assert trimmer.check() is True
    for _ in range(10):  # every later batch takes those 200 MiB again
        fake_process["rss"] = 700 * MiB
        trimmer.check()
    assert fake_process["trims"] == 1


def test_no_op_without_glibc(fake_process, monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", None)
    trimmer = MemoryTrimmer(slack=0)
    fake_process["rss"] += 10**9
    assert not trimmer.check() and not trimmer.check()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux")
def test_resident_bytes_follows_touched_memory():
    before = resident_bytes()
    block = np.ones(64 * MiB, dtype=np.uint8)  # touched, so resident
    assert resident_bytes() - before >= 48 * MiB
    del block
