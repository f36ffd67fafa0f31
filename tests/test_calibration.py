"""Measuring the CPU configuration (streams x threads, batch size) on a run's first batches, cached.

No timing is asserted: the race is run with a fake clock, whose time each forward pass advances
by a cost that depends on the configuration in place.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from stacembed import RunConfig, calibration, run
from stacembed.calibration import Calibrator, Choice, cache_key, cache_path, candidates, load_choice, pick, store_choice
from stacembed.chips import ChipBatch
from stacembed.embed import Embedder
from stacembed.models import resolve_card

SAMPLE = Path(__file__).parent.parent / "catalogs" / "sample" / "catalog.json"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, on a 2-core machine, calibration on."""
    monkeypatch.setenv("STACEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(calibration.ENV, raising=False)
    monkeypatch.setattr("stacembed.embed.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    yield tmp_path / "cache"
    torch.set_num_threads(before)


class FakeClock:
    """Time that only forward passes move: each adds ``cost(threads, chips per pass)`` per chip,
    to the time of the thread that runs it (as passes side by side each take their own time)."""

    def __init__(self, cost):
        self.cost = cost
        self.local = threading.local()

    def __call__(self) -> float:
        return getattr(self.local, "now", 0.0)

    def charge(self, chips: int, batch: int | None) -> None:
        self.local.now = self() + chips * self.cost(torch.get_num_threads(), batch or chips)


def batches(count: int, size: int = 4, chips: int | None = None):
    rng = np.random.default_rng(0)
    for index in range(count):
        n = size if chips is None or index < count - 1 else chips
        yield ChipBatch([object()] * n, rng.normal(80, 20, (n, 6, 64, 64)).astype("float32"), np.ones(n))


class BandMeans(torch.nn.Module):
    """A model whose embeddings do not depend on the batch or the threads: per-band means, 16 times."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 16)


def racing(cost, *, embedder=None, halve_batch=True, rounds=2, stored=None):
    """A calibrator over the 2-core candidates at batch 4, timed by ``cost``, and its embed function."""
    embedder = embedder or Embedder(resolve_card("stacembed-demo-landsat"), BandMeans(), torch.device("cpu"))
    clock = FakeClock(cost)
    reference = Choice(2, 1, 4)
    calibrator = Calibrator(candidates(reference, 2, 4, batch_fixed=False), halve_batch=halve_batch,
                            apply=embedder.apply, clock=clock, rounds=rounds,
                            store=lambda *args: stored.append(args) if stored is not None else None)

    def embed(batch):
        clock.charge(len(batch.chips), embedder.batch)
        return batch, embedder(batch.pixels)

    return calibrator, embed, embedder


def test_candidates_split_the_cores_and_the_reference_comes_first():
    assert candidates(Choice(2, 1, 16), 2, 4, batch_fixed=False) == [Choice(2, 1, 16), Choice(1, 2, 16)]
    assert candidates(Choice(4, 2, 16), 8, 4, batch_fixed=True) == [
        Choice(4, 2, 16), Choice(1, 8, 16), Choice(2, 4, 16)]
    assert candidates(Choice(1, 1, 8), 1, 4, batch_fixed=False) == [Choice(1, 1, 8)]
    rates = {Choice(2, 1, 16): 100.0, Choice(1, 2, 16): 102.0, Choice(2, 1, 8): 120.0}
    assert pick(rates, Choice(2, 1, 16)) == Choice(2, 1, 8)
    assert pick({Choice(2, 1, 16): 100.0, Choice(2, 1, 8): 102.0}, Choice(2, 1, 16)) == Choice(2, 1, 16)  # noise
    # more threads per pass stall when another process takes a core: they must win clearly
    assert pick({Choice(2, 1, 16): 100.0, Choice(1, 2, 16): 108.0}, Choice(2, 1, 16)) == Choice(2, 1, 16)
    assert pick({Choice(2, 1, 16): 100.0, Choice(1, 2, 16): 115.0}, Choice(2, 1, 16)) == Choice(1, 2, 16)


@pytest.mark.parametrize("cost, winner", [
    # one pass on both threads is cheapest per chip, and halving its batch costs more
    (lambda threads, batch: (1.0 if threads == 2 else 3.0) * (2.0 if batch < 4 else 1.0), Choice(1, 2, 4)),
    # two single-threaded passes, and smaller batches pay
    (lambda threads, batch: (4.0 if threads == 2 else 1.0) * (0.5 if batch < 4 else 1.0), Choice(2, 1, 2)),
])
def test_calibration_picks_the_candidate_measured_fastest(cost, winner):
    stored = []
    calibrator, embed, embedder = racing(cost, stored=stored)
    out = list(calibrator.run(embed, batches(20)))
    assert sum(len(b.chips) for b, _ in out) == 80 and all(len(e) == len(b.chips) for b, e in out)  # every chip
    assert calibrator.done and calibrator.choice == winner
    assert set(calibrator.rates) == {Choice(2, 1, 4), Choice(1, 2, 4), Choice(winner.streams, winner.threads, 2)}
    assert (embedder.streams, torch.get_num_threads(), embedder.batch) == (winner.streams, winner.threads, winner.batch)
    assert stored and stored[0][0] == winner
    assert calibrator.tuning().source == "calibrated"


def test_a_candidate_that_embeds_differently_is_never_raced():
    calibrator, embed, embedder = racing(lambda threads, batch: 1.0 if threads == 2 else 5.0)
    real = embedder.__call__

    def two_threads_differ(pixels, context=None):
        out = real(pixels, context)
        return out + np.float32(1e-3) if torch.get_num_threads() == 2 else out

    def embed_differently(batch):
        calibrator.clock.charge(len(batch.chips), embedder.batch)
        return batch, two_threads_differ(batch.pixels)

    list(calibrator.run(embed_differently, batches(20)))
    assert calibrator.equivalent[(2, 4)] is False and Choice(1, 2, 4) not in calibrator.rates
    assert calibrator.choice.threads == 1  # the faster 1x2 was refused: it would change the bytes


def test_an_item_that_ends_mid_race_leaves_the_rest_to_the_next_item():
    calibrator, embed, _ = racing(lambda threads, batch: 1.0, halve_batch=False)
    assert len(list(calibrator.run(embed, batches(5)))) == 5  # the untimed first round, the reference's, one more
    assert not calibrator.done and set(calibrator.rates) == {Choice(2, 1, 4)}
    assert len(list(calibrator.run(embed, batches(1, chips=1)))) == 1  # too short an item to time anything
    assert not calibrator.done and Choice(1, 2, 4) not in calibrator.rates
    assert len(list(calibrator.run(embed, batches(9, chips=3)))) == 9  # the rest, partial last batch included
    assert calibrator.done


def test_the_first_turn_is_not_timed():
    """What only a run's first batches pay (files opening, first tiles, threads starting) must
    not count against the reference, which goes first: here it makes them 10x dearer."""
    cold = {"batches": 0}

    def cost(threads, batch):
        return (10.0 if cold["batches"] <= 2 else 1.0) * (1.0 if threads == 1 else 1.05)

    calibrator, embed, embedder = racing(cost, halve_batch=False)

    def counting(batch):
        cold["batches"] += 1
        return embed(batch)

    list(calibrator.run(counting, batches(20)))
    assert calibrator.done and calibrator.choice == Choice(2, 1, 4)
    assert calibrator.rates[Choice(2, 1, 4)] > calibrator.rates[Choice(1, 2, 4)]


def test_a_turn_lasts_whole_rounds_until_its_minimum_time():
    """Cheap passes are timed over many batches, not one round of two (a small CNN's round took
    20 ms, which one slow tile decode swung); every batch is still embedded once, in order."""
    calibrator, embed, _ = racing(lambda threads, batch: 0.01, halve_batch=False)
    out = list(calibrator.run(embed, batches(200)))
    assert [len(e) for _, e in out] == [4] * 200 and calibrator.done
    for chips, seconds in calibrator.totals.values():
        assert seconds >= 2 * calibrator.min_seconds and chips % 8 == 0 and chips > 2 * 8


def test_the_choice_is_cached_by_model_chip_shape_cores_and_torch(cache):
    embedder = Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"))
    key = cache_key(embedder, None, 2, None)
    assert {"model", "architecture", "weights", "chip", "cores", "cpu", "torch", "precision"} <= key.keys()
    assert key["chip"] == [6, 64, 64] and key["cores"] == 2 and key["torch"] == torch.__version__
    assert load_choice(key, 2) is None
    path = store_choice(key, Choice(1, 2, 8), {Choice(1, 2, 8): 10.0}, {(2, 8): True})
    assert path == cache_path(key) and path.parent == cache / "calibration"
    assert load_choice(key, 2) == Choice(1, 2, 8)
    assert load_choice({**key, "cores": 4}, 4) is None  # another machine's cores: another file
    other = cache_key(Embedder.from_card(resolve_card("stacembed-demo-landsat"), None, torch.device("cpu"),
                                         chip_size=32), None, 2, None)
    assert cache_path(other) != path and load_choice(other, 2) is None


@pytest.mark.parametrize("content", [
    b"\x80\x04\x95 not json: a pickle would start like this",
    b'{"key": "wrong", "choice": {"streams": 1, "threads": 2, "batch": 8}}',
    b"[1, 2, 3]",
    b"{}",
])
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(cache, content, caplog):
    first = _sample_run(cache.parent / "first")
    assert first.cpu_configuration == "calibrated"
    [path] = (cache / "calibration").glob("*.json")
    path.write_bytes(content)
    again = _sample_run(cache.parent / "again")
    assert again.cpu_configuration == "calibrated"  # measured anew, never unpickled
    assert "ignoring the calibration cache file" in caplog.text
    assert json.loads(path.read_text())["choice"]  # replaced by the new measurement


def test_a_cached_choice_is_used_without_calibrating(cache, monkeypatch):
    first = _sample_run(cache.parent / "first")
    assert first.cpu_configuration == "calibrated"
    [path] = (cache / "calibration").glob("*.json")
    record = json.loads(path.read_text())
    record["choice"] = {"streams": 1, "threads": 2, "batch": 3}
    path.write_text(json.dumps(record))
    monkeypatch.setattr(Calibrator, "run", lambda *a, **k: pytest.fail("calibrated again"))
    cached = _sample_run(cache.parent / "cached")
    assert cached.cpu_configuration == "cached"
    assert (cached.streams, cached.threads, cached.batch_size) == (1, 2, 3)


@pytest.mark.parametrize(("streams", "batch", "halves_identical", "calls"), [
    (1, 3, False, [(6, 3), (3, 3)]),  # one stream: nothing to finish together
    (2, 3, False, [(3, 3), (3, 3), (3, 3)]),  # halves of 6 are passes of the choice's 3 chips
    (2, 6, False, [(6, 6), (3, 6)]),  # passes of 3 were not found to embed as passes of 6
    (2, 6, True, [(3, 6), (3, 6), (3, 6)]),  # they were
])
def test_a_cached_choice_keeps_the_feeds_batches_and_splits_them_into_its_passes(cache, monkeypatch, streams, batch,
                                                                                halves_identical, calls):
    """As the calibrated run goes on after its race: batches of the reference's size (6), each
    embedded ``choice.batch`` chips per pass, an item's last full batch in halves when there are
    streams to share them and the halves' passes are verified (each sample item: 9 chips)."""
    _sample_run(cache.parent / "first")
    [path] = (cache / "calibration").glob("*.json")
    record = json.loads(path.read_text())
    record.update(choice={"streams": streams, "threads": 1, "batch": batch}, halves_identical=halves_identical)
    path.write_text(json.dumps(record))
    seen = []
    embed = Embedder.__call__
    monkeypatch.setattr(Embedder, "__call__", lambda self, pixels, *a: (seen.append((len(pixels), self.batch)),
                                                                        embed(self, pixels, *a))[1])
    cached = _sample_run(cache.parent / "cached")
    assert cached.cpu_configuration == "cached" and cached.batch_size == batch
    assert seen == calls * 4


def test_streams_threads_and_batch_size_given_win(cache, monkeypatch):
    measure = Calibrator.run
    monkeypatch.setattr(Calibrator, "run", lambda *a, **k: pytest.fail("calibrated although told"))
    given = _sample_run(cache.parent / "given", streams=1, threads=1)
    assert given.cpu_configuration == "given" and (given.streams, given.threads, given.batch_size) == (1, 1, 6)
    assert not (cache / "calibration").exists()
    monkeypatch.setattr(Calibrator, "run", measure)
    sized = _sample_run(cache.parent / "sized", batch_size=3)
    assert sized.batch_size == 3  # --batch-size: only streams x threads are measured
    [path] = (cache / "calibration").glob("*.json")
    record = json.loads(path.read_text())
    assert record["key"]["batch_size"] == 3 and {m["batch"] for m in record["measured"]} == {3}


def test_calibration_writes_the_bytes_of_a_fixed_configuration(cache, monkeypatch):
    """The calibrating run, the cached run and a run with calibration off write the same embeddings."""
    calibrated = _sample_run(cache.parent / "calibrated")
    assert calibrated.cpu_configuration == "calibrated"
    cached = _sample_run(cache.parent / "cached")
    assert cached.cpu_configuration == "cached"
    monkeypatch.setenv(calibration.ENV, "0")
    fixed = _sample_run(cache.parent / "fixed")
    assert fixed.cpu_configuration == "default"
    chosen = _sample_run(cache.parent / "chosen", streams=calibrated.streams, threads=calibrated.threads,
                         batch_size=calibrated.batch_size)
    assert chosen.cpu_configuration == "given"
    columns = {name: _embeddings(cache.parent / name) for name in ("calibrated", "cached", "fixed", "chosen")}
    assert len(columns["fixed"]) == 4
    for name in ("calibrated", "cached", "chosen"):
        assert columns[name] == columns["fixed"], name


def _sample_run(out: Path, **options):
    """The sample catalog (4 items of 9 chips), GeoParquet only, in batches of 6 (halved: 3)
    unless ``batch_size`` says, each candidate timed once on two batches, the first too: the
    sample's items are small (``test_the_first_turn_is_not_timed`` and
    ``test_a_turn_lasts_whole_rounds_until_its_minimum_time`` test those two rules)."""
    config = RunConfig(out=out, catalog=str(SAMPLE), formats=("geoparquet",), device="cpu", progress=False,
                       **{k: v for k, v in options.items() if v is not None})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("stacembed.embed.DEFAULT_BATCH_SIZE", 6)
        patch.setattr("stacembed.calibration.ROUNDS", 1)  # one turn each: 4 items of 2 batches
        patch.setattr("stacembed.calibration.MIN_TURN_SECONDS", 0.0)  # of two batches,
        patch.setattr("stacembed.calibration.WARM_UP_ROUNDS", 0)  # all timed
        return run(config)


def _embeddings(out: Path) -> dict[str, bytes]:
    """The bytes of each item's GeoParquet ``embedding`` column."""
    found = {}
    for path in sorted(out.glob("*/*/*.parquet")):
        column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
        found[path.name] = column.values.to_numpy(zero_copy_only=False).tobytes()
    return found


def test_the_last_full_batch_of_an_item_is_halved_and_nothing_else():
    def sizes(counts, full=4):
        source = [ChipBatch([object()] * n, np.zeros((n, 1, 2, 2), "float32"), np.ones(n)) for n in counts]
        return [len(b.chips) for b in calibration.halve_last_full(source, full)]

    assert sizes([4, 4, 4, 1]) == [4, 4, 2, 2, 1]  # the streams finish together, then the short one
    assert sizes([4, 4, 4]) == [4, 4, 2, 2]
    assert sizes([3]) == [3] and sizes([]) == [] and sizes([4, 4, 3], full=4) == [4, 2, 2, 3]


def test_calibrate_again_replaces_the_cached_choice(cache, monkeypatch):
    assert _sample_run(cache.parent / "first").cpu_configuration == "calibrated"
    monkeypatch.setenv(calibration.ENV, "again")
    assert _sample_run(cache.parent / "again").cpu_configuration == "calibrated"
    monkeypatch.delenv(calibration.ENV)
    assert _sample_run(cache.parent / "then").cpu_configuration == "cached"
