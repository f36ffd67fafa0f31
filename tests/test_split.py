"""stacembed.learn.split: the guarantees of a spatially honest split, checked on many random
groupings (hypothesis-style loops in plain pytest): no group on both sides, every chip on
exactly one, the same seed giving the same split."""

from __future__ import annotations

import numpy as np
import pytest

from stacembed.errors import ConfigError
from stacembed.learn.split import block_ids, kfold, split_blocks, split_items

TRIALS = 200


def random_groups(rng: np.random.Generator) -> np.ndarray:
    """Chip groups of uneven sizes, as strings or integers, in no particular order."""
    sizes = rng.integers(1, rng.choice([3, 20, 200]), size=rng.integers(2, 40))
    groups = np.repeat(np.arange(len(sizes)) * 7 - 50, sizes)
    groups = rng.permutation(groups)
    return groups.astype(str) if rng.random() < 0.5 else groups


def assert_honest(groups: np.ndarray, train: np.ndarray, validation: np.ndarray) -> None:
    assert train.dtype == bool and validation.dtype == bool and train.shape == groups.shape
    assert (train ^ validation).all()  # every chip on exactly one side
    assert not set(groups[train]) & set(groups[validation])  # no group on both
    assert train.any() and validation.any()


def test_split_blocks_properties():
    rng = np.random.default_rng(0)
    for _ in range(TRIALS):
        groups = random_groups(rng)
        fraction, seed = float(rng.uniform(0.05, 0.95)), int(rng.integers(0, 1000))
        train, validation = split_blocks(groups, validation_fraction=fraction, seed=seed)
        assert_honest(groups, train, validation)
        again = split_blocks(groups, validation_fraction=fraction, seed=seed)
        assert (again[1] == validation).all()
        # the input order does not matter, only the groups
        order = rng.permutation(len(groups))
        assert (split_blocks(groups[order], validation_fraction=fraction, seed=seed)[1] == validation[order]).all()


def test_split_aims_at_the_fraction_of_chips():
    """Within one group's size of the target when groups are small next to it (see ``_split``)."""
    rng = np.random.default_rng(1)
    for _ in range(TRIALS):
        sizes = rng.integers(1, 6, size=rng.integers(20, 80))
        groups = np.repeat(np.arange(len(sizes)), sizes)
        fraction = float(rng.uniform(0.1, 0.5))
        _, validation = split_blocks(groups, validation_fraction=fraction, seed=int(rng.integers(1000)))
        assert abs(validation.sum() - fraction * len(groups)) <= sizes.max()


def test_seeds_give_different_splits():
    groups = np.repeat(np.arange(50), 4)
    splits = {tuple(split_blocks(groups, seed=seed)[1]) for seed in range(10)}
    assert len(splits) > 5


def test_split_keeps_one_group_each_side_in_extreme_cases():
    # every group alone overshoots the target: the smallest goes to validation
    groups = np.array([0] * 50 + [1] * 40 + [2] * 45)
    train, validation = split_blocks(groups, validation_fraction=0.05)
    assert set(groups[validation]) == {1}
    # taking every group would come closest to the target: one stays in training
    train, validation = split_blocks(np.array([0, 1]), validation_fraction=0.95)
    assert train.sum() == 1 and validation.sum() == 1


def test_split_items_is_split_blocks_on_items():
    items = np.array(["a", "a", "b", "c", "c", "c", "d"])
    assert (split_items(items, seed=3)[1] == split_blocks(items, seed=3)[1]).all()
    with pytest.raises(ConfigError, match="--split blocks"):
        split_items(["a", "a"])


def test_kfold_properties():
    rng = np.random.default_rng(2)
    for _ in range(TRIALS):
        groups = random_groups(rng)
        sizes = np.unique(groups, return_counts=True)[1]
        k, seed = int(rng.integers(2, min(len(sizes), 8) + 1)), int(rng.integers(1000))
        folds = list(kfold(groups, k, seed=seed))
        assert len(folds) == k
        for train, validation in folds:
            assert_honest(groups, train, validation)
        held_out = np.sum([validation for _, validation in folds], axis=0)
        assert (held_out == 1).all()  # every chip (so every group) validated exactly once
        loads = [validation.sum() for _, validation in folds]
        assert max(loads) - min(loads) <= sizes.max()  # greedy largest-first balance
        assert all((a[1] == b[1]).all() for a, b in zip(folds, kfold(groups, k, seed=seed), strict=True))


def test_kfold_seed_orders_groups_of_equal_size():
    groups = np.repeat(np.arange(12), 3)
    assert len({tuple(next(kfold(groups, 3, seed=seed))[1]) for seed in range(10)}) > 1


def test_too_few_groups():
    with pytest.raises(ConfigError, match="1 group.*--block-size, or --split items"):
        split_blocks(["x/0/0"] * 5)
    with pytest.raises(ConfigError, match="3 group.*fewer than the 5.*fewer folds"):
        list(kfold(np.repeat([1, 2, 3], 4), 5))
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        kfold([1, 2, 3], 1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split_blocks([1, 2, 3], validation_fraction=1.0)


def test_block_ids():
    x = np.array([0.0, 999.9, 1000.0, -0.1, 500.0, 500.0])
    y = np.array([0.0, 999.9, 0.0, 0.0, 2500.0, 2500.0])
    crs = ["EPSG:32633"] * 5 + ["EPSG:32634"]
    ids = block_ids(x, y, 1000.0, crs)
    assert ids.tolist() == ["EPSG:32633/0/0", "EPSG:32633/0/0", "EPSG:32633/1/0", "EPSG:32633/-1/0",
                            "EPSG:32633/0/2", "EPSG:32634/0/2"]
    # the same place in two CRSs: two blocks
    assert ids[4] != ids[5]
    assert (block_ids(x, y, 1000.0, "EPSG:32633") == block_ids(x, y, 1000.0, ["EPSG:32633"] * 6)).all()


def test_block_ids_split_whole_blocks():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 10_000, (2, 2000))
    ids = block_ids(x, y, 2_500.0, "EPSG:3857")
    assert len(set(ids)) == 16
    train, validation = split_blocks(ids, validation_fraction=0.25, seed=1)
    assert_honest(ids, train, validation)


def test_block_ids_refuse_bad_input():
    with pytest.raises(ConfigError, match="block size must be > 0"):
        block_ids([0.0], [0.0], 0, "EPSG:4326")
    with pytest.raises(ConfigError, match="finite"):
        block_ids([np.nan], [0.0], 10, "EPSG:4326")
    with pytest.raises(ConfigError, match="as many x as y"):
        block_ids([0.0, 1.0], [0.0], 10, "EPSG:4326")
