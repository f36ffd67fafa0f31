"""Python's cyclic garbage collector and the objects that live as long as a run.

A process that has loaded torch and timm holds millions of objects that stay until it ends;
the collector's full passes walk them all and free none. Three moments matter, each measured
on 2 cores: the start-up that creates them (``start_up``, the command line's), the embedding
that allocates per batch (``frozen_while_embedding``, the local executor's) and the interpreter's
exit (``skip_final_collection``).
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_start_up_froze = False
_exit_registered = False


@contextmanager
def start_up() -> Iterator[Callable[[], None]]:
    """A command's start-up without the collector; call what it yields when the start-up is
    over (and at the latest when the block ends): the collector runs again.

    Importing torch, timm and the model's code creates hundreds of thousands of objects that
    live as long as the process; the collector's full passes walk them all, three times during
    a run's start-up with the tiny Prithvi (0.2 s of CPU, measured with ``gc.callbacks``). Without
    them the first batch came sooner (medians of 3-4 pairs of runs): 0.3 s for the tiny Prithvi,
    0.55 s for ViT-S/16 (timm). Those objects are then frozen (``gc.freeze``: later passes skip
    them), as Python's documentation advises for such start-ups. Cycles made during the start-up
    are never collected: 8,000 objects in a run of the tiny Prithvi, a fixed amount whatever the
    area.
    """
    enabled = gc.isenabled()
    gc.disable()

    def ready() -> None:
        global _start_up_froze
        if enabled and not gc.isenabled():
            gc.freeze()
            _start_up_froze = True
            gc.enable()

    try:
        yield ready
    finally:
        ready()


@contextmanager
def frozen_while_embedding() -> Iterator[None]:
    """Keep what is loaded before the items are embedded (torch, the model, the catalog: objects
    that live as long as the run) out of the collections during it (``gc.freeze``).

    The collections Python runs as batches allocate walk every tracked object: with torch and
    timm loaded, about 2% of a ViT run's CPU time in collections that free nothing of it
    (measured with py-spy). Afterwards they are handed back to the collector (``gc.unfreeze``),
    unless someone else had frozen objects before, whose choice stands. After ``start_up`` froze
    them, there is nothing to do (and counting the frozen objects would take 30-40 ms).
    """
    if _start_up_froze:
        yield
        return
    thawed = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if thawed:
            gc.unfreeze()


def skip_final_collection() -> None:
    """At interpreter exit, leave the objects alive then out of the last collection.

    The collection Python runs while it shuts down walks every object: 1.0-1.3 s of CPU after
    the last line of a `stacembed run`, 0.23 s with them frozen (``gc.freeze``) first. Only the
    final pass changes: ``atexit`` handlers, flushing and closing files, and the ordinary
    collections during the run are as before.
    """
    global _exit_registered
    if not _exit_registered:
        atexit.register(gc.freeze)
        _exit_registered = True
