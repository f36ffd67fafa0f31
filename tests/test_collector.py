"""The cyclic garbage collector around a run (``stacembed.collector``): paused while the
start-up loads what lives as long as the process, those objects frozen while the items are
embedded, in the command line and through the Python API. Each case runs in a fresh process."""

from __future__ import annotations

import subprocess
import sys

from conftest import DEMO_CARD

START_UP = """
import gc, sys
from stacembed.collector import start_up

with start_up() as ready:
    print(gc.isenabled())
    ready()
    print(gc.isenabled(), gc.get_freeze_count() > 0)
with start_up():  # ended without the call: the collector runs again all the same
    print(gc.isenabled())
print(gc.isenabled())
gc.disable()
with start_up() as ready:  # a program that turned the collector off keeps it off
    ready()
print(gc.isenabled())
"""


def test_start_up_pauses_the_collector_until_it_is_over():
    out = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "False", "True", "False"]


RUN_GC = """
import gc, sys
import stacembed.job, stacembed.readers.direct as direct
from stacembed.cli import main

during = []
load, frame = stacembed.job.Inputs.load_embedder, direct.DirectReader._frame
stacembed.job.Inputs.load_embedder = lambda *a, **k: (during.append(("build", gc.isenabled())), load(*a, **k))[1]
direct.DirectReader._frame = lambda *a, **k: (during.append(("read", gc.isenabled())), frame(*a, **k))[1]
main(["run", "--model", sys.argv[1], "--out", sys.argv[2], "--max-items", "1", "-q"], standalone_mode=False)
print(sorted(set(during)), gc.isenabled(), gc.get_freeze_count() > 0)
"""


def test_a_run_builds_its_model_without_the_collector_and_reads_with_it(tmp_path):
    """``stacembed run``: the collector is off while imports and the model build make objects
    that live as long as the process, and on (past those, frozen) before the first pixel is read."""
    done = subprocess.run([sys.executable, "-c", RUN_GC, str(DEMO_CARD), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[('build', False), ('read', True)] True True", done.stderr
    assert (tmp_path / "out" / "catalog.json").exists()


API_GC = """
import gc, sys
import stacembed.readers.direct as direct
from stacembed import RunConfig, run

frozen = []
frame = direct.DirectReader._frame
direct.DirectReader._frame = lambda *a, **k: (frozen.append(gc.get_freeze_count() > 0), frame(*a, **k))[1]
if sys.argv[3] == "frozen-before":
    gc.freeze()
run(RunConfig(model=sys.argv[1], out=sys.argv[2], max_items=1, progress=False))
print(set(frozen), gc.isenabled(), gc.get_freeze_count() > 0)
"""


def test_the_python_api_freezes_while_it_embeds_and_thaws_after(tmp_path):
    """``run()`` in someone's process: what was loaded is frozen while the items are embedded and
    handed back to the collector after, unless the caller had frozen objects, whose choice stands."""
    for before, after in (("nothing", "False"), ("frozen-before", "True")):
        done = subprocess.run([sys.executable, "-c", API_GC, str(DEMO_CARD), str(tmp_path / before), before],
                              capture_output=True, text=True, check=True)
        assert done.stdout.strip() == f"{{True}} True {after}", done.stderr
