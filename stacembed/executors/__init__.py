"""Executors embed the series of a frozen ``job.Run``; ``pipeline.run`` owns everything around them.

An executor only "embeds these series": it is entered as a context manager (a cluster executor
connects to its scheduler there), says whether the model the caller loads is the one that
embeds (``embeds_here``; else the caller loads it on the CPU only to check the run, and drops
it before the workers build theirs), and ``embed(run, embedder)`` yields each series' chip
count in the order of ``run.inputs.series`` (None: finished by an earlier run). Loading the model, describing the
run, the output tree, the summary and the catalog stay with the caller, written once.

Executors import ``job`` (the unit of work), never the module that calls them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..embed import Embedder
    from ..job import Run


class Executor(Protocol):
    embeds_here: bool

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...

    def streams(self, embedder: Embedder | None) -> int:
        """Forward passes that run at once in each process embedding the series."""

    def embed(self, run: Run, embedder: Embedder | None) -> Iterator[int | None]: ...


def executor_for(config: RunConfig) -> Executor:
    """dask.distributed with ``--dask-address`` or ``--workers``, else this process."""
    if config.dask_address or config.workers:
        from .cluster import ClusterExecutor

        return ClusterExecutor(config)
    from .local import LocalExecutor

    return LocalExecutor(config)
