"""Choosing the CPU configuration of a run by measuring it: forward passes at once (streams),
torch threads per pass, and chips per forward pass.

No rule by model family picks these well: on 2 cores, two single-threaded passes side by side
ran a small CNN 1.24-1.35x faster than one pass on both threads, while for a ViT-S/16 at 224 px
the two were within a few percent of each other and swapped places from machine to machine.
So, on the CPU, when neither ``--streams`` nor ``--threads`` is given, the first run of a model
measures: it embeds its first batches with each candidate in turn (``candidates``: the ways to
split the cores into streams x threads, then half the batch size for the fastest split unless
``--batch-size`` is given), keeps the fastest, and caches the choice (JSON, never a pickle) in
``$STACEMBED_CACHE/calibration/`` under a key of the model's identity, the chip shape, the
usable cores, the CPU and the torch version (``cache_key``). Later runs with the same key use
the cached choice from their first batch (``load_choice``); a file that cannot be read, or does
not match its key, is ignored and replaced by the next calibration.

Nothing is wasted and nothing changes the embeddings:

- the batches a candidate is timed on are real chips of the run, written like any other;
- a candidate is raced only once its numerics are known to be the reference's (the default
  configuration's, which is timed first): before its turn, a full batch the reference embedded
  is embedded again with the candidate's threads per pass and batch size, and the two compared
  bit for bit (``Calibrator.verify``). Torch's float sums can depend on both, for some models on
  some CPUs (measured: a timm ``test_resnet`` at 1 vs 2 threads, batch 8); a candidate that
  differs is never used. So a calibrated run writes the same bytes as a run of the reference
  configuration, and as one of the configuration it chose, given on the command line.
- A smaller batch size is taken as forward passes over parts of the feed's batches
  (``Embedder.batch``), so the chips fall into the same batches as in a run with that
  ``--batch-size`` from the start.

The cost falls on the first run only: one extra forward pass of one batch per candidate whose
numerics are checked, and the time the slower candidates took on their batches.
``STACEMBED_CALIBRATE=0`` turns it off (the defaults of ``embed.default_streams`` are used);
``STACEMBED_CALIBRATE=again`` measures anew and replaces the cached choice (say, one measured
while other work loaded the machine).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .concurrency import ordered_map

if TYPE_CHECKING:
    import numpy as np

    from .chips import ChipBatch
    from .embed import Embedder

log = logging.getLogger("stacembed")

CACHE_VERSION = 1
ENV = "STACEMBED_CALIBRATE"
# Turns each candidate is timed on; the turns of the candidates alternate.
ROUNDS = 2
# A turn is whole rounds of as many batches as the widest candidate has streams, until it has
# lasted this long: a turn of two batches was 20 ms for a small CNN on 64 px chips, where a
# GDAL tile decode or a GeoParquet row group written in it swung the rates by 3x and made the
# calibration keep 1 stream x 2 threads for resnet18 and the demo model, while 2 x 1 ran their
# whole items 1.18x and 1.10x faster (measured on 2 cores). A ViT's turn is still two batches.
# The race's eight turns then take ~2.5 s of a CNN's first run.
MIN_TURN_SECONDS = 0.3
# Rounds of batches run first with the reference, not timed (see ``Calibrator``).
WARM_UP_ROUNDS = 1


@dataclass(frozen=True, order=True)
class Choice:
    """One CPU configuration: ``streams`` passes at once, ``threads`` torch threads each,
    ``batch`` chips per forward pass."""

    streams: int
    threads: int
    batch: int

    def describe(self) -> str:
        return (f"{self.streams} stream{'s' * (self.streams > 1)} x {self.threads} "
                f"thread{'s' * (self.threads > 1)}, batches of {self.batch}")

    @property
    def numerics(self) -> tuple[int, int]:
        """What can change the floating-point result of a chip: threads per pass and batch size
        (streams cannot: each pass is one call on its own batch)."""
        return (self.threads, self.batch)


@dataclass
class Tuning:
    """How a run's CPU configuration was decided, for its log and ``RunSummary``.

    ``source``: ``given`` (``--streams``/``--threads``, a cluster worker's share, or a GPU),
    ``default`` (calibration off), ``cached`` (an earlier run measured it), ``calibrated`` (this
    run measured it), ``calibrating`` (not finished: the run ended first).
    """

    source: str
    choice: Choice
    measured: dict[str, float] = field(default_factory=dict)  # chips/s by candidate, when measured

    def describe(self) -> str:
        text = f"{self.choice.describe()} ({self.source}"
        if self.measured:
            text += ": " + ", ".join(f"{name} {rate:.1f} chips/s" for name, rate in self.measured.items())
        return text + ")"


def enabled() -> bool:
    """Whether runs may calibrate (``STACEMBED_CALIBRATE``; on unless 0/false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def splits(cores: int, max_streams: int) -> list[tuple[int, int]]:
    """The ways to share ``cores`` among passes: (streams, threads each) with streams x threads
    = cores, streams a power of two (or the cores themselves) up to ``max_streams``."""
    found = []
    for streams in sorted({1, *(2**k for k in range(1, 8)), cores}):
        if streams <= min(cores, max_streams) and cores % streams == 0:
            found.append((streams, cores // streams))
    return found


def candidates(reference: Choice, cores: int, max_streams: int, batch_fixed: bool) -> list[Choice]:
    """The splits of the cores at the reference's batch size, the reference first.

    Half the batch size is tried afterwards, for the fastest split only (``Calibrator``), unless
    ``batch_fixed`` (``--batch-size``)."""
    found = [reference]
    for streams, threads in splits(cores, max_streams):
        choice = Choice(streams, threads, reference.batch)
        if choice not in found:
            found.append(choice)
    return found


# A candidate replaces the one measured faster before it only when it beats it by this much:
# differences below it are noise on a shared machine, and the earlier candidates are the defaults.
MARGIN = 0.03
# ... and by this much when it runs more torch threads per pass. Such passes wait for all their
# threads at every layer, so another process taking a core stalls them: measured on 2 cores
# under load, a ViT-S/16 calibrated at 1 x 2 threads (12.8 chips/s against 11.4 for 2 x 1) then
# ran at 5.3 chips/s, and torch with 2 threads has run 10x slower than with 1 (benchmarks/).
WIDER_MARGIN = 0.10


def pick(rates: dict[Choice, float], reference: Choice, margin: float = MARGIN,
         wider_margin: float = WIDER_MARGIN) -> Choice:
    """The candidate of highest measured chips/s, in the order measured (the reference first),
    a later one winning only when ``margin`` faster (``wider_margin`` with more threads per pass)."""
    best = reference if reference in rates else next(iter(rates))
    for choice, rate in rates.items():
        needed = wider_margin if choice.threads > best.threads else margin
        if rate > rates[best] * (1 + needed):
            best = choice
    return best


# -- the cache ------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_identity(path: Path | None) -> dict[str, Any] | str:
    """Which weights: path, size and modification time (cheap; no hash of a large file)."""
    if path is None:
        return "random"
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(embedder: Embedder, weights: Path | None, cores: int, batch_request: int | None) -> dict[str, Any]:
    """What a measured choice holds for: the model (card, architecture, weights, what an
    embedding is, precision), the chip shape, the cores, the CPU, torch's version, and the
    batch size when ``--batch-size`` fixed it."""
    import torch

    card = embedder.card
    return {
        "version": CACHE_VERSION,
        "model": card.name,
        "architecture": card.architecture,
        "card": str(card.href),
        "weights": file_identity(weights),
        "pooling": embedder.pooling,
        "layer": None if embedder.layer is None else str(embedder.layer),
        "precision": embedder.precision,
        "chip": list(embedder.input_shape),
        "cores": cores,
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "batch_size": batch_request,
    }


def cache_path(key: dict[str, Any]) -> Path:
    from .models.weights import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "calibration" / f"{digest}.json"


def load_choice(key: dict[str, Any], cores: int) -> Choice | None:
    """The cached choice for ``key``, or None: no file, or one that is not valid JSON of this
    key with a usable choice (it is then ignored, and replaced by the next calibration)."""
    found = load_record(key, cores)
    return found[0] if found else None


def load_record(key: dict[str, Any], cores: int) -> tuple[Choice, bool] | None:
    """``load_choice``, and whether half batches of the choice were found to embed identically."""
    path = cache_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("key") != key:
            raise ValueError("written for another key")
        raw = data["choice"]
        values = [raw["streams"], raw["threads"], raw["batch"]]
        if any(type(v) is not int for v in values):
            raise ValueError("the choice is not three integers")
        choice = Choice(*values)
        if not (1 <= choice.streams <= cores and 1 <= choice.threads <= cores and choice.batch >= 1):
            raise ValueError(f"{choice} does not fit {cores} cores")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the calibration cache file %s (%s); the run calibrates again", path, exc)
        return None
    return choice, data.get("halves_identical") is True


def store_choice(key: dict[str, Any], choice: Choice, rates: dict[Choice, float],
                 equivalent: dict[tuple[int, int], bool]) -> Path | None:
    """Write the choice as JSON (atomically: a temporary file renamed into place)."""
    path = cache_path(key)
    record = {
        "key": key,
        "choice": asdict(choice),
        # whether half batches of the choice embed bit for bit as whole ones (``halve_last_full``)
        "halves_identical": choice.batch >= 2 and equivalent.get((choice.threads, choice.batch // 2), False),
        "measured": [{**asdict(c), "chips_per_s": round(r, 3)} for c, r in rates.items()],
        "numerics_checked": [{"threads": t, "batch": b, "identical": same} for (t, b), same in equivalent.items()],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the CPU configuration in %s: %s", path, exc)
        return None
    return path


# -- the calibration, on the run's own batches ----------------------------------------------------

Embed = Callable[["ChipBatch"], tuple["ChipBatch", "np.ndarray"]]


class _Passes:
    """The seconds of a turn's forward passes, added by the stream threads as each pass ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.ended = threading.Condition()

    def add(self, seconds: float) -> None:
        with self.ended:
            self.seconds.append(seconds)
            self.ended.notify_all()

    def seconds_after(self, count: int) -> float:
        """The seconds of all passes so far, once at least ``count`` of them have ended (the
        caller handed out ``count`` batches: they end, raising or not)."""
        with self.ended:
            self.ended.wait_for(lambda: len(self.seconds) >= count)
            return sum(self.seconds)


def _part(batch: ChipBatch, start: int, stop: int) -> ChipBatch:
    from .chips import ChipBatch

    return ChipBatch(batch.chips[start:stop], batch.pixels[start:stop], batch.valid_fraction[start:stop])


def halve_last_full(batches: Iterable[ChipBatch], full: int) -> Iterator[ChipBatch]:
    """The batches, with the last one of ``full`` chips (before a shorter one, or at the end) cut
    in two halves: at the end of an item, the streams then finish together instead of one
    running a whole batch alone (measured for a ViT-S/16 on 2 cores: one core idle 1.2 s at the
    end of each item). Only for a model whose embeddings of half batches were found bit for bit
    those of whole ones (``Calibrator.verify``); it holds one batch back to see what follows."""
    held = None
    for batch in batches:
        if held is not None:
            yield from (_halves(held) if len(batch.chips) < len(held.chips) == full else (held,))
        held = batch
    if held is not None:
        yield from (_halves(held) if len(held.chips) == full else (held,))


def may_halve(choice: Choice, feed_batch: int, identical_at_half: bool) -> bool:
    """Whether ``choice`` may embed a feed batch of ``feed_batch`` chips in two halves: each half is
    passes of at most ``choice.batch`` chips, or passes of the half's size were found to embed bit
    for bit as the choice's (``identical_at_half``)."""
    half = feed_batch // 2
    return half >= 1 and (choice.batch <= half or identical_at_half)


def _halves(batch: ChipBatch) -> tuple[ChipBatch, ...]:
    from .chips import ChipBatch

    half = len(batch.chips) // 2
    if half < 1 or len(batch.chips) % 2:
        return (batch,)
    return tuple(ChipBatch(batch.chips[part], batch.pixels[part], batch.valid_fraction[part])
                 for part in (slice(0, half), slice(half, None)))


class Calibrator:
    """Races ``candidates`` on a run's batches (``run``), then runs on with the fastest.

    Each candidate's turn is whole rounds of batches (as many as the widest candidate has
    streams) whose forward passes take at least ``min_seconds`` per stream, and the turns
    alternate, ``rounds`` times over (``A B A B``): a load that comes and goes on a shared
    machine then weighs on every candidate alike. A candidate's rate is its chips over the
    seconds its passes took, divided by its streams (passes run side by side): a turn's wall
    time would also count its streams filling up and draining at its ends, which the steady
    state does not have, and which cost several streams more than one (measured: the tiny
    Prithvi's 2 x 1 looked 10% slower than 1 x 2 on 0.3 s turns, and ran 1.07x faster). The
    run's first ``warm_up`` rounds of batches, with the reference, are not timed: they pay for
    what only the first batches do (opening files, GDAL's first tiles, threads starting,
    torch's first passes per thread). ``apply(choice)`` puts a configuration in place
    (torch threads, the embedder's streams and batch); ``clock`` times each forward pass, in
    the thread that runs it (a fake one in tests); ``store(choice, rates, equivalent)`` keeps
    the result. The state lasts over the run's items: a turn cut short by the end of an item is
    not counted, and is taken again on the next item.
    """

    def __init__(self, candidates: list[Choice], *, halve_batch: bool,
                 apply: Callable[[Choice], None], store: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.perf_counter, rounds: int = ROUNDS,
                 min_seconds: float = MIN_TURN_SECONDS, warm_up: int = WARM_UP_ROUNDS) -> None:
        self.reference = candidates[0]
        self.rounds = rounds
        self.min_seconds = min_seconds
        self.warm_up = warm_up  # untimed rounds still to run
        self.exhausted = False  # whether the last turn ended with the item (``_turn``)
        self.schedule = list(candidates) * rounds  # the turns still to run, in order
        self.halve_batch = halve_batch and self.reference.batch >= 2
        self.apply = apply
        self.store = store
        self.clock = clock
        self.segment = max(c.streams for c in candidates)  # batches per turn
        self.totals: dict[Choice, list[float]] = {}  # chips and seconds measured, by candidate
        self.equivalent: dict[tuple[int, int], bool] = {self.reference.numerics: True}
        self.probe: tuple[ChipBatch, np.ndarray] | None = None  # a full batch and its reference embedding
        self.choice: Choice | None = None

    @property
    def done(self) -> bool:
        return self.choice is not None

    @property
    def rates(self) -> dict[Choice, float]:
        """Chips/s measured so far, by candidate, in the order first measured."""
        return {choice: chips / max(seconds, 1e-9) for choice, (chips, seconds) in self.totals.items()}

    def run(self, embed: Embed, batches: Iterable[ChipBatch], ahead: int = 1) -> Iterator[tuple[ChipBatch, Any]]:
        """``embed(batch)`` for each batch, in order: calibrating while turns are left, then
        with the choice."""
        source = iter(batches)
        while not self.done:
            if not self.schedule:
                self._add_half_batch() or self._finish()
                continue
            candidate = self.schedule[0]
            if candidate.numerics not in self.equivalent and self.probe is None:
                # No full batch embedded by the reference yet (its turn ended with a short item):
                # the next batch, with the reference, in line.
                first = next(source, None)
                if first is None:
                    return
                self.apply(self.reference)
                result = embed(first)
                self._keep_probe(result)
                yield result
                continue
            if not self.verify(candidate, embed):
                self.schedule = [c for c in self.schedule if c.numerics != candidate.numerics]
                continue
            self.apply(candidate)
            sizes: list[int] = []
            passes = _Passes()
            took = self._turn(source, sizes, passes, candidate.streams, 0.0 if self.warm_up else self.min_seconds)
            for result in ordered_map(self._timed(embed, passes), took, candidate.streams, ahead, pool=True):
                if self.probe is None and candidate.numerics == self.reference.numerics:
                    self._keep_probe(result)
                yield result
            seconds = passes.seconds_after(len(sizes)) / candidate.streams
            if self.exhausted:
                return  # the item ended: this turn is taken again on the next item's batches
            if self.warm_up:  # a first round: not timed (see the class)
                self.warm_up -= 1
                continue
            totals = self.totals.setdefault(candidate, [0, 0.0])
            totals[0] += sum(sizes)
            totals[1] += seconds
            self.schedule.pop(0)
            if not self.schedule and not self._add_half_batch():
                self._finish()
        if self.split_tail and self.choice.streams > 1:
            source = halve_last_full(source, self.reference.batch)
        yield from ordered_map(embed, source, self.choice.streams, ahead, pool=True)

    def _timed(self, embed: Embed, passes: _Passes) -> Embed:
        """``embed``, the seconds of each call (raising or not) added to ``passes``."""
        def timed(batch: ChipBatch) -> Any:
            start = self.clock()
            try:
                return embed(batch)
            finally:
                passes.add(self.clock() - start)
        return timed

    def _turn(self, source: Iterator[ChipBatch], sizes: list[int], passes: _Passes, streams: int,
              seconds: float) -> Iterator[ChipBatch]:
        """The batches of one turn: whole rounds of ``segment`` batches, until the passes have
        taken ``seconds`` per stream (or the item ends: ``exhausted``); their sizes into ``sizes``.

        Whether a round ends the turn is decided once its passes have ended (the streams are
        handed batches ahead: the passes done when the next one is asked for are not yet all of
        the round's), so a turn's length does not depend on how the threads happened to run."""
        self.exhausted = True
        for batch in source:
            sizes.append(len(batch.chips))
            yield batch
            if len(sizes) % self.segment:
                continue
            if seconds <= 0 or passes.seconds_after(len(sizes)) / streams >= seconds:
                self.exhausted = False
                return

    @property
    def split_tail(self) -> bool:
        """Whether the chosen configuration may embed the feed's batches in halves (verified)."""
        choice, half = self.choice, self.reference.batch // 2
        return choice is not None and may_halve(choice, self.reference.batch,
                                                self.equivalent.get((choice.threads, half), False))

    def _keep_probe(self, result: tuple[ChipBatch, Any]) -> None:
        """Keep a full batch the reference embedded, and its embeddings, to check candidates with."""
        batch, embeddings = result
        if len(batch.chips) == self.reference.batch:
            self.probe = (batch, embeddings)

    def verify(self, candidate: Choice, embed: Embed) -> bool:
        """Whether ``candidate`` embeds the probe batch bit for bit as the reference did.

        The probe's chips go through the candidate's passes as its streams would run them (a
        batch of 16 checked at batch 8 on 2 streams: two passes at once), so the check uses
        every core."""
        import numpy as np

        numerics = candidate.numerics
        if numerics not in self.equivalent:
            assert self.probe is not None
            batch, expected = self.probe
            count = max(candidate.batch, self.reference.batch)
            self.apply(candidate)
            parts = [_part(batch, first, first + candidate.batch) for first in range(0, count, candidate.batch)]
            got = np.concatenate([e for _, e in ordered_map(embed, parts, candidate.streams, pool=True)])
            same = got.shape == expected[:count].shape and got.tobytes() == expected[:count].tobytes()
            self.equivalent[numerics] = same
            if not same:
                log.info("calibration: %s embeds differently from %s (float sums in another order); "
                         "not used", candidate.describe(), self.reference.describe())
        return self.equivalent[numerics]

    def _add_half_batch(self) -> bool:
        """Schedule the fastest split at half the batch size, once, its turns alternating with
        more of the fastest split's own."""
        if not self.halve_batch or not self.totals:
            return False
        self.halve_batch = False
        best = pick(self.rates, self.reference)
        self.schedule = [Choice(best.streams, best.threads, best.batch // 2), best] * self.rounds
        return True

    def _finish(self) -> None:
        self.choice = pick(self.rates, self.reference) if self.rates else self.reference
        self.apply(self.choice)
        self.probe = None
        log.info("CPU configuration: %s, measured on the run's first batches (%s)", self.choice.describe(),
                 ", ".join(f"{c.streams}x{c.threads} batch {c.batch}: {r:.1f} chips/s" for c, r in self.rates.items()))
        if self.store is not None:
            self.store(self.choice, self.rates, self.equivalent)

    def tuning(self) -> Tuning:
        measured = {f"{c.streams}x{c.threads} b{c.batch}": r for c, r in self.rates.items()}
        if self.done:
            return Tuning("calibrated", self.choice, measured)
        return Tuning("calibrating", self.reference, measured)


def setup(embedder: Embedder, weights: Path | None, *, cores: int, batch_request: int | None, fixed: bool,
          max_streams: int, default_batch: int) -> Tuning | None:
    """Decide how ``embedder`` finds its CPU configuration, and put a known one in place.

    ``fixed``: ``--streams``/``--threads`` (or a cluster worker's share) decided it, so nothing is
    measured. Otherwise, on the CPU: a cached choice for this model, chip shape and machine is
    applied, or a ``Calibrator`` is attached that measures on the run's first batches. Returns
    the tuning known now (None while calibrating).

    A cached choice runs as the calibrated run went on after its race: the feed keeps the
    reference's batches (``--batch-size`` or the default), embedded ``choice.batch`` chips per
    pass, an item's last full batch in halves where that was verified. Measured on 2 cores, tiny
    Prithvi, 3,844 chips, choice 2 x 1 batch 8 (pairs of runs): feed batches of 16 rather than
    the choice's 8 read in runs twice as wide and hand half as many batches over; 34.75 -> 33.82 s
    (medians of 3), page faults 1.09 -> 0.62 million; the same bytes.
    """
    import torch

    reference = Choice(embedder.streams, torch.get_num_threads(), batch_request or default_batch)
    if fixed or embedder.device.type != "cpu" or not enabled():
        embedder.tuning = Tuning("given" if fixed or embedder.device.type != "cpu" else "default", reference)
        return embedder.tuning
    key = cache_key(embedder, weights, cores, batch_request)
    record = None if os.environ.get(ENV, "").strip().lower() == "again" else load_record(key, cores)
    embedder.pooled = True
    if record is not None:
        cached, halves_identical = record
        embedder.apply(cached)
        if may_halve(cached, reference.batch, halves_identical):
            embedder.tail_halves = reference.batch
        embedder.tuning = Tuning("cached", cached)
        log.info("CPU configuration: %s, as measured by an earlier run (%s)", cached.describe(), cache_path(key))
        return embedder.tuning
    embedder.calibrator = Calibrator(
        candidates(reference, cores, max_streams, batch_fixed=batch_request is not None),
        halve_batch=batch_request is None, apply=embedder.apply, rounds=ROUNDS, min_seconds=MIN_TURN_SECONDS,
        warm_up=WARM_UP_ROUNDS,
        store=lambda choice, rates, equivalent: store_choice(key, choice, rates, equivalent),
    )
    return None


def tuning_of(embedder: Embedder) -> Tuning | None:
    """How ``embedder``'s CPU configuration was decided (measured now, cached, or given)."""
    if embedder.calibrator is not None:
        return embedder.calibrator.tuning()
    return embedder.tuning
