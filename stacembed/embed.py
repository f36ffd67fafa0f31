"""The inference engine: device choice, precision, value scaling, batched forward passes.

Chips go in at their native size (no resizing: a chip is the source's own pixels). Pixels
without data enter the model as 0 *after* value scaling, i.e. the training mean for z-score
scaling, so that they pull the embedding as little as possible.

Batches arrive from ``feed``. On the CPU, several batches go through the model at once, one
per thread (``--streams``, ``default_streams``); how many, with how many torch threads each and
how many chips per pass, is measured on a model's first run and cached (``calibration``),
unless ``--streams`` or ``--threads`` says. On CUDA, inputs go through pinned memory
with non-blocking copies, and ``--precision bf16|fp16`` runs the forward pass under autocast.
CNNs run ``channels_last`` where that measured faster (``prefers_channels_last``).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .calibration import Calibrator, Choice, Tuning, halve_last_full
from .concurrency import ordered_map
from .config import PRECISIONS
from .errors import ConfigError, ModelError
from .models import ModelCard, create_backbone
from .models.pooling import FeatureModel
from .models.scaling import ValueScaling
from .models.weights import create_with_weights, load_artifact


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() is False: no GPU, "
            "no driver, or a CPU-only torch build); use --device cpu, or auto to take what is there"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be one of auto, cpu, cuda, mps; got {name!r}")
    return torch.device(name)


MAX_STREAMS = 4
DEFAULT_BATCH_SIZE = 16  # chips per forward pass on the CPU when neither --batch-size nor a calibration says


def default_streams(device: torch.device, threads: int | None = None, compile: bool = False) -> int:
    """Forward passes to run at once when ``--streams`` is not given.

    On the CPU, one per core up to ``MAX_STREAMS``, the cores split among them: measured on 2
    cores, two single-threaded forward passes at once ran 1.24-1.35x the chips/s of one pass
    on both threads (demo model and resnet18, batches of 16), because torch's intra-op threads
    wait for each other at every layer and one thread per pass never does. Beyond 4 the cores
    go to each pass rather than to more passes (each holds its own batch and activations).
    One stream on GPUs (kernels queue on the device already), with ``--threads`` (the user
    chose the split) and with ``--compile`` (compiled modules are not called from threads).
    """
    if device.type != "cpu" or threads or compile:
        return 1
    return max(1, min(MAX_STREAMS, usable_cores()))


def configure_threads(threads: int | None, reader_threads: int = 1, streams: int = 1) -> int:
    """Torch intra-op threads per forward pass: ``threads``, or the usable cores less a dask
    reader pool's, divided among ``streams`` (min 1).

    The default single reader thread is not counted: it spends its time in GDAL with the GIL
    released and needs a few percent of one core (measured on 2 cores: giving the model both
    cores ran resnet18 end to end 1.5x faster than keeping one for the reader).
    """
    count = threads or max(1, (usable_cores() - (reader_threads if reader_threads > 1 else 0)) // streams)
    torch.set_num_threads(count)
    return count


def default_prefetch(device: torch.device, streams: int = 1) -> int:
    """Batches to read ahead when ``--prefetch`` is not given: 2 when the model leaves the reader
    thread something to run on (a GPU, or fewer torch threads over all streams than cores), else
    0 (in line).

    Measured on 2 CPUs with torch on both: reading in line was as fast or faster (demo model
    1.07x, resnet18 equal, medians of 6 alternating runs); a reader thread has no idle core to
    run on, and competes with torch's threads for cores and the GIL. With several streams, reads
    in line already overlap with the other streams' forward passes.
    """
    return 2 if device.type != "cpu" or torch.get_num_threads() * streams < usable_cores() else 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Embedder:
    """A model ready for inference: ``embedder(pixels)`` -> float32 ``(n, D)`` or ``(n, D, h, w)``.

    ``pooling`` and ``layer`` say what an embedding is (see ``models.pooling``); the output
    shape per chip is measured once with a probe forward pass, so writers know it up front.
    ``streams`` is how many threads will call it at once (CPU only; see ``default_streams``):
    a call only reads the model and works on its own copy of the batch.
    """

    def __init__(self, card: ModelCard, model: nn.Module, device: torch.device, *, pooling: str = "default",
                 layer: int | str | None = None, chip_size: int | None = None, time_steps: int = 1,
                 precision: str = "fp32", compile: bool = False, streams: int = 1) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA device; use bf16 on the CPU")
        if streams > 1 and (device.type != "cpu" or compile):
            raise ConfigError("--streams above 1 runs forward passes side by side on the CPU; "
                              f"use 1 with {'--compile' if compile else f'device {device.type}'}")
        self.streams = streams
        self.batch: int | None = None  # chips per forward pass, when less than a batch of the feed
        self.pooled = False  # run even one stream in a thread of its own, reads overlapping it (calibrated runs)
        self.tail_halves: int | None = None  # feed batches of this size: an item's last one in halves (verified)
        self.calibrator: Calibrator | None = None  # measuring the CPU configuration on the first batches
        self.tuning: Tuning | None = None  # how the CPU configuration was decided
        self.first_output_at: float | None = None  # perf_counter() when the first batch came out
        self.card = card
        self.device = device
        self.pooling = pooling
        self.layer = layer
        self.precision = precision
        self.context_inputs: tuple[str, ...] = tuple(getattr(model, "context_inputs", ()))
        self.model = FeatureModel(model, pooling, layer).eval().to(device)
        scaling = card.value_scaling
        self.scaling = ValueScaling.from_card(scaling, len(card.bands)).to(device) if scaling else None
        self.channels_last = prefers_channels_last(model, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model = torch.compile(self.model)
        size = card.chip_size(chip_size)
        # One chip as the run stacks it: (band, [time,] size, size).
        self.input_shape = (len(card.bands), *((time_steps,) if time_steps > 1 else ()), size, size)
        self.output_shape: tuple[int, ...] = tuple(self._forward(np.zeros((1, *self.input_shape), "float32")).shape[1:])
        if pooling == "default" and layer is None and self.output_shape != (card.embedding_size,):
            raise ModelError(
                f"model {card.name} returns {self.output_shape} per chip, the card promises "
                f"({card.embedding_size},)"
            )

    @property
    def dimensions(self) -> int:
        return self.output_shape[0]

    @property
    def dense(self) -> bool:
        """Whether each chip gives a map of patch embeddings rather than one vector."""
        return len(self.output_shape) == 3

    @classmethod
    def from_card(cls, card: ModelCard, weights: Path | None, device: torch.device, **options) -> Embedder:
        """Build the card's model and load ``weights`` (None: keep a seeded random initialisation).

        TorchScript and torch.export artifacts are the model itself; other weights are loaded
        into the card's architecture from the registry.
        """
        if weights is None:
            # Untrained on request: seeded, so that reruns (and resumed runs) agree.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = create_backbone(card)
        else:
            model = load_artifact(weights, card.artifact_type)
            if model is None:
                model = create_with_weights(card, weights)
        return cls(card, model, device, **options)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """Pixels -> the model's input tensor on the device: scaled, NaN -> 0, in its memory format.

        The batch is copied once, into memory of the engine's own (C-contiguous float32), and
        scaled and filled in place there, so the caller's array is left as it was: on the CPU a
        numpy copy that torch takes over, on CUDA a copy into pinned memory sent on with a
        non-blocking transfer, elsewhere the transfer itself. Torch is never handed the caller's
        array: batches can be read-only views (``chips`` cuts them out of a read with
        ``sliding_window_view``), which ``torch.from_numpy`` warns about. The channels_last
        conversion comes last (measured: per-band scaling of a channels_last tensor takes 2.5x
        as long).
        """
        if self.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=torch.float32, pin_memory=True)
            host.numpy()[...] = pixels
            x = host.to(self.device, non_blocking=True)
        elif self.device.type == "cpu":
            x = torch.from_numpy(np.array(pixels, dtype=np.float32, order="C", copy=True))
        else:  # MPS: the transfer is the copy; a read-only batch goes through a host copy first
            contiguous = np.ascontiguousarray(pixels, dtype=np.float32)
            if not contiguous.flags.writeable:
                contiguous = contiguous.copy()
            x = torch.from_numpy(contiguous).to(self.device, non_blocking=True)
        if self.scaling is not None:
            self.scaling.apply_(x)
        # Integer pixels hold no NaN (``Reader.read``), and a finite scaling of them makes none.
        if not (np.issubdtype(pixels.dtype, np.integer) and (self.scaling is None or self.scaling.finite)):
            x.nan_to_num_(nan=0.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def _forward(self, pixels: np.ndarray, context: dict[str, np.ndarray] | None = None) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type,
                                   dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
                    if self.precision != "fp32" else nullcontext())
        extra = {k: torch.as_tensor(v, device=self.device) for k, v in (context or {}).items()
                 if k in self.context_inputs}
        with torch.inference_mode(), autocast:
            return self.model(self.preprocess(pixels), **extra)

    def auto_batch_size(self, default: int | None = None, limit: int = 1024) -> int:
        """Chips per batch for this device: on CUDA, what half the free memory holds (measured
        with a forward pass of 4 chips of the run's own shape, time steps included); else
        ``default``, else ``DEFAULT_BATCH_SIZE`` (a calibrated choice of fewer chips per forward
        pass splits these batches: ``batch``)."""
        if self.device.type != "cuda":
            return default or DEFAULT_BATCH_SIZE
        probe = np.zeros((4, *self.input_shape), "float32")
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._forward(probe)
        per_chip = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // 4)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(limit, free // 2 // per_chip)))

    def __call__(self, pixels: np.ndarray, context: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Embed a batch of chips ``(n, band, [time,] height, width)`` of measurements (NaN = no data).

        ``context`` holds the extra inputs the model declares (``context_inputs``), per chip.
        With ``batch`` set below ``n``, the chips go through the model ``batch`` at a time (as a
        run with that ``--batch-size`` would pass them: feed batches are multiples of it).
        """
        step = self.batch if self.batch and self.batch < len(pixels) else len(pixels)
        parts = []
        for first in range(0, len(pixels), max(1, step)):
            part = {k: v[first:first + step] for k, v in context.items()} if context else context
            out = self._forward(pixels[first:first + step], part)
            if tuple(out.shape[1:]) != self.output_shape:
                raise ModelError(f"model {self.card.name} returned {tuple(out.shape)}, "
                                 f"expected (n, {self.output_shape})")
            parts.append(out.float().contiguous().cpu().numpy())
        embeddings = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.first_output_at is None:
            self.first_output_at = time.perf_counter()
        return embeddings

    def apply(self, choice: Choice) -> None:
        """Put a CPU configuration in place: ``choice.streams`` passes at once, of
        ``choice.threads`` torch threads and ``choice.batch`` chips each. Call it between
        batches, with no forward pass running."""
        torch.set_num_threads(choice.threads)
        self.streams = choice.streams
        self.batch = choice.batch

    def map(self, embed, batches, ahead: int = 1):
        """``embed(batch)`` of each batch, in order, ``streams`` at a time (``concurrency.ordered_map``),
        the CPU configuration measured first when the run calibrates (``calibration.Calibrator``)."""
        if self.calibrator is not None:
            return self.calibrator.run(embed, batches, ahead)
        if self.tail_halves and self.streams > 1:
            batches = halve_last_full(batches, self.tail_halves)
        return ordered_map(embed, batches, self.streams, ahead, pool=self.pooled)


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to run ``model`` on ``device`` in the channels_last (NHWC) memory format.

    On CUDA every convolutional backbone gains (tensor cores work in NHWC). On the CPU only
    those built of convolution + batch norm do, which oneDNN runs fused in NHWC: measured on 2
    cores, batches of 16 chips of 64 px, timm test_resnet 1.2-1.5x, resnet18 1.0-1.3x,
    efficientnet_b0 1.2x faster, while ConvNeXt (channel LayerNorm) ran 0.9x. Transformers
    (``blocks``) stay as they are. The format changes the order of floating-point sums, not
    the result beyond float32 rounding.
    """
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules()) and not hasattr(model, "blocks")
    if device.type == "cuda":
        return convolutional
    if device.type == "cpu":
        return convolutional and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return False


def tune(embedder: Embedder, weights: Path | None, *, fixed: bool, reader_threads: int = 1,
         batch_size: int | None = None) -> Tuning | None:
    """Find ``embedder``'s CPU configuration: ``fixed`` by the caller, cached from an earlier
    run, or measured on this run's first batches (``calibration.setup``)."""
    from . import calibration

    cores = max(1, usable_cores() - (reader_threads if reader_threads > 1 else 0))
    return calibration.setup(embedder, weights, cores=cores, batch_request=batch_size, fixed=fixed,
                             max_streams=MAX_STREAMS, default_batch=DEFAULT_BATCH_SIZE)
