"""Spatially honest validation: whole groups of chips go to one side of a split.

Neighbouring chips look alike (spatial autocorrelation), and overlapping ones share pixels; a
split of single chips at random puts near-copies of training chips into validation and flatters
every score. So chips are split by group: square spatial blocks of their centres
(``block_ids``: a block of N chips a side keeps most neighbours together) or the source items
they come from (``split_items``). ``kfold`` gives K such splits for cross-validation.

The guarantees, whatever the groups: no group is on both sides, every chip is on exactly one,
and the same groups and seed give the same split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import ConfigError

BLOCKS_HINT = "use a smaller --block-size, or --split items"
ITEMS_HINT = "use --split blocks"


def block_ids(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, block_size: float,
              crs: str | Sequence[str] | np.ndarray) -> np.ndarray:
    """The spatial block of each chip centre ``(x, y)``, as ``"<crs>/<column>/<row>"`` strings.

    ``block_size`` is in the CRS's (projected) units, e.g. N chips times a chip's extent.
    ``crs`` is one CRS for all chips or one per chip: it is part of the key, because blocks
    of two CRSs with the same numbers are different places."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ConfigError(f"block_ids needs as many x as y centres, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(block_size) and block_size > 0):
        raise ConfigError(f"the block size must be > 0, got {block_size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("chip centres must be finite numbers")
    crs = np.broadcast_to(np.asarray(crs, dtype=object), x.shape)
    columns = np.floor(x / block_size).astype(np.int64)
    rows = np.floor(y / block_size).astype(np.int64)
    return np.array([f"{c}/{col}/{row}" for c, col, row in zip(crs, columns.tolist(), rows.tolist(), strict=True)],
                    dtype=str)


def split_blocks(groups: Sequence | np.ndarray, *, validation_fraction: float = 0.2,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` boolean masks over the chips, whole groups (e.g. ``block_ids``)
    to validation until it holds about ``validation_fraction`` of the chips."""
    return _split(groups, validation_fraction, seed, BLOCKS_HINT)


def split_items(item_ids: Sequence | np.ndarray, *, validation_fraction: float = 0.2,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``split_blocks`` with each chip's source item as its group."""
    return _split(item_ids, validation_fraction, seed, ITEMS_HINT)


def kfold(groups: Sequence | np.ndarray, k: int, *, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``k`` pairs of ``(train, validation)`` masks: every group is in exactly one validation
    fold, and the folds hold about as many chips each (largest group first, into the fold with
    fewest chips so far; the seed orders groups of equal size)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ConfigError(f"the number of folds must be an integer >= 2, got {k!r}")
    inverse, sizes = _groups(groups, k, f"{BLOCKS_HINT}, or fewer folds")
    folds = _balanced_folds(sizes, k, seed)[inverse]
    return ((folds != fold, folds == fold) for fold in range(k))


def _split(groups: Sequence | np.ndarray, fraction: float, seed: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Groups in a seeded order, each taken into validation if it brings the count of chips
    there closer to the target (so small groups still fill a gap that a large one overshot),
    never all of them; at least one, the smallest, if each alone overshoots too far."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be between 0 and 1, got {fraction}")
    inverse, sizes = _groups(groups, 2, hint)
    target, chips = fraction * len(inverse), len(inverse)
    chosen = np.zeros(len(sizes), bool)
    taken = 0
    for group in np.random.default_rng(seed).permutation(len(sizes)):
        after = taken + sizes[group]
        if abs(after - target) < abs(taken - target) and after < chips:
            chosen[group], taken = True, after
    if not taken:
        chosen[np.argmin(sizes)] = True
    validation = chosen[inverse]
    return ~validation, validation


def _groups(groups: Sequence | np.ndarray, needed: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Each chip's group index (groups sorted, so that the input's order does not matter) and
    the chips per group; at least ``needed`` groups."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ConfigError(f"groups must be one label per chip, got an array of shape {groups.shape}")
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if len(sizes) < needed:
        raise ConfigError(f"the chips fall into {len(sizes)} group(s), fewer than the {needed} needed to "
                          f"validate on groups unseen in training: {hint}")
    return inverse, sizes


def _balanced_folds(sizes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold of each group (greedy largest-first: folds end within one group's size of each
    other, and each gets at least one group)."""
    shuffled = np.random.default_rng(seed).permutation(len(sizes))
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    load = np.zeros(k, np.int64)
    folds = np.empty(len(sizes), np.int64)
    for group in order:
        fold = int(np.argmin(load))
        folds[group] = fold
        load[fold] += sizes[group]
    return folds
