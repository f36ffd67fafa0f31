"""Find a model's weights and load them without ever unpickling arbitrary objects.

Resolution order: an explicit path (``--weights``), the card's ``mlm:model`` asset as a local
file, the caches (stacembed's ``STACEMBED_CACHE``, default ``~/.cache/stacembed``; the Hugging
Face hub cache for ``huggingface.co`` URLs; the torch hub checkpoint directory), and finally a
download (SHA-256 checked, written atomically) unless offline (``--offline``,
``STACEMBED_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).

Artifacts: safetensors and torch state dicts (read with ``weights_only=True``) are loaded into
the card's architecture; TorchScript archives and ``torch.export`` programs (``.pt2``) *are*
the model, so a network from any codebase runs without its source. A program that takes one
dict instead of the chip tensor (Clay v1.5's encoder) runs through its card's
``stacembed:program_inputs``, which says what each key receives (``backbones/datacube.py``).
None of these unpickles arbitrary Python objects; a checkpoint that would need it is refused.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
import zipfile
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..access import Access
from ..errors import ModelError
from ..layout import atomic_path, file_sha256
from .card import ModelCard
from .registry import create_backbone

RANDOM = "random"


def cache_dir() -> Path:
    return Path(os.environ.get("STACEMBED_CACHE") or Path.home() / ".cache" / "stacembed")


def is_offline(forced: bool = False) -> bool:
    return forced or any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("STACEMBED_OFFLINE", "HF_HUB_OFFLINE"))


_digests: dict[tuple[str, int, int], Future[str]] = {}
_digests_lock = threading.Lock()


def weights_sha256(path: Path) -> Future[str]:
    """The SHA-256 hex digest of weights file ``path``, hashed once per process (per path, size
    and modification time) in a background thread.

    hashlib releases the GIL, so a checkpoint is hashed on another core while the caller imports
    and builds the model (the provenance's hash of a 1.2 GB ViT-L takes about a second), and a
    file that a card's checksum verified is not hashed again for the provenance.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        future = _digests.get(key)
        if future is None:
            future = _digests[key] = Future()
            threading.Thread(target=_hash_into, args=(path, future), name="stacembed-sha256", daemon=True).start()
    return future


def _hash_into(path: Path, future: Future[str]) -> None:
    try:
        future.set_result(file_sha256(path))
    except BaseException as exc:  # handed to whoever waits for the digest
        future.set_exception(exc)


def resolve_weights(card: ModelCard, override: str | None = None, *, offline: bool = False) -> Path | None:
    """A local weights file for ``card``, or None for ``--weights random``; ``offline`` never downloads."""
    if override == RANDOM:
        return None
    if override:
        path = Path(override)
        if not path.is_file():
            raise ModelError(f"weights file {override} does not exist")
        return path
    href = card.weights_href
    if not href:
        raise ModelError(
            f"model card {card.href} has no mlm:model asset with weights; pass --weights PATH "
            "(or --weights random to run untrained)"
        )
    scheme = urlparse(href).scheme
    if scheme in ("", "file"):
        path = Path(urlparse(href).path if scheme else href)
        if not path.is_file():
            raise ModelError(f"weights {path} named by model card {card.href} do not exist")
        if card.weights_sha256 and weights_sha256(path).result() != card.weights_sha256:
            raise ModelError(f"weights {path} do not match the SHA-256 in model card {card.href}")
        return path
    return _cached_download(href, card.weights_sha256, offline)


def _cached_download(url: str, sha256: str | None, offline: bool = False) -> Path:
    name = Path(urlparse(url).path).name or "weights"
    target = cache_dir() / (sha256[:16] if sha256 else "unverified") / name
    for candidate in (target, *_other_caches(url)):
        if candidate.is_file() and (not sha256 or candidate == target or file_sha256(candidate) == sha256):
            return candidate
    if is_offline(offline):
        raise ModelError(f"weights {url} are not in the cache and downloads are off (offline); "
                         f"download them to {target} or pass --weights PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        try:
            digest = _download(url, out)
        except OSError as exc:
            raise ModelError(f"cannot download weights {url}: {exc}; download them to {target} "
                             "or pass --weights PATH") from None
        if sha256 and digest != sha256:
            raise ModelError(f"weights {url} have SHA-256 {digest}, the card says {sha256}; not used")
    return target


def _other_caches(url: str) -> list[Path]:
    """Where Hugging Face and torch hub would have put the same file, if a user fetched it before."""
    parts = urlparse(url)
    name = Path(parts.path).name
    found = [Path(torch.hub.get_dir()) / "checkpoints" / name]
    segments = parts.path.strip("/").split("/")
    if parts.netloc.endswith("huggingface.co") and "resolve" in segments:
        i = segments.index("resolve")
        repo, revision, filename = segments[:i], segments[i + 1], "/".join(segments[i + 2:])
        snapshots = _hf_hub_cache() / f"models--{'--'.join(repo)}" / "snapshots"
        found += sorted(snapshots.glob(f"*/{filename}")) if revision == "main" else [snapshots / revision / filename]
    return found


DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a weights download attempt fails


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub`` (``~/.cache/huggingface/hub``)."""
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub")


def _download(url: str, out) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    # The session every download goes through: retries with backoff, a timeout per request.
    with Access(timeout=DOWNLOAD_TIMEOUT).session(url).get(url, stream=True) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False) as bar:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from safetensors or a torch checkpoint, loaded with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"refusing to load {path}: it is not a plain tensor checkpoint ({str(exc).splitlines()[0]}); "
            "stacembed never unpickles arbitrary objects; convert it to safetensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict")
    return state


# mlm:artifact_type values (MLM v1.5) for artifacts that hold the whole model.
TORCHSCRIPT_TYPES = ("torch.jit.script", "torch.jit.trace", "torch.jit.save")
EXPORT_TYPES = ("torch.export.save", "torch.export")


def artifact_kind(path: Path, declared: str | None = None) -> str:
    """``state_dict``, ``torchscript`` or ``export``: from the card's artifact type, else the file."""
    if declared in EXPORT_TYPES or path.suffix == ".pt2":
        return "export"
    if declared in TORCHSCRIPT_TYPES:
        return "torchscript"
    if path.suffix != ".safetensors" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # TorchScript archives carry the model's code; torch.save archives only data.pkl + tensors.
        if any("/code/" in name for name in names):
            return "torchscript"
        if any(name.endswith("serialized_exported_program.json") or "/models/" in name for name in names):
            return "export"
    return "state_dict"


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module: it has no train mode, so ``eval()`` must not recurse."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> ExportedModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def load_artifact(path: Path, declared: str | None = None) -> nn.Module | None:
    """The model itself when ``path`` is a TorchScript or torch.export artifact that runs on the chip
    tensor, else None: weights for the card's architecture, or a program that takes one dict, which
    only its card can describe (``create_with_weights`` runs it; the program read here is kept for
    it, so the file is read once)."""
    kind = artifact_kind(path, declared)
    try:
        if kind == "torchscript":
            with warnings.catch_warnings():  # TorchScript is deprecated for new models, not for ones users have
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu")
        if kind == "export":
            from .backbones.datacube import dict_argument_keys

            program = torch.export.load(str(path))
            if dict_argument_keys(program) is not None:
                _keep_program(path, program)
                return None
            return ExportedModel(program.module())
    except Exception as exc:
        raise ModelError(f"cannot load {kind} model {path}: {str(exc).splitlines()[0][:200]}") from None
    return None


# The dict-taking program ``load_artifact`` read last, until ``create_with_weights`` takes it.
_KEPT: dict[tuple[str, int, int], torch.export.ExportedProgram] = {}
_KEPT_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _keep_program(path: Path, program: torch.export.ExportedProgram) -> None:
    with _KEPT_LOCK:
        _KEPT.clear()  # one at most: a program can hold a large model's weights
        _KEPT[_file_key(path)] = program


def load_program(path: Path) -> torch.export.ExportedProgram:
    """The torch.export program in ``path`` (the one ``load_artifact`` just read, if it is this file)."""
    with _KEPT_LOCK:
        program = _KEPT.pop(_file_key(path), None)
    if program is not None:
        return program
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot load export model {path}: {str(exc).splitlines()[0][:200]}") from None


def load_weights(model: nn.Module, path: Path, *, assign: bool = False) -> None:
    """Load ``path`` into ``model``, strictly: a key or shape mismatch is an error, not a guess.

    A backbone whose official checkpoints hold more than it needs (e.g. an MAE's decoder)
    provides ``checkpoint_filter(state_dict)``, as timm models do, to select its own keys.
    ``assign`` hands the checkpoint's tensors to the model (cast to its dtypes) instead of
    copying them into its own: for a model built on the meta device.
    """
    state = load_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    checkpoint_filter = getattr(model, "checkpoint_filter", None)
    if callable(checkpoint_filter):
        state = checkpoint_filter(state)
    if assign:
        expected = model.state_dict()
        state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ModelError(f"weights {path} do not fit the model: {' '.join(first[:2])[:300]}") from None


def create_with_weights(card: ModelCard, path: Path) -> nn.Module:
    """The card's network holding the weights in ``path``, without a random initialisation.

    The network is built on torch's meta device (shapes only: no memory, no init) and then
    given the checkpoint's tensors. The initialisation this skips is thrown away anyway, and
    costs: 10 s for a ViT-L on 2 cores (0.35 s this way), and twice the model's memory. A
    network that needs real tensors to be built, or keeps tensors no checkpoint holds
    (non-persistent buffers, e.g. Swin's relative position index), is built the ordinary way.

    A torch.export program that takes one dict (``load_artifact`` leaves it to the card) is the
    model, fed per the card's ``stacembed:program_inputs`` (``backbones.datacube.DatacubeProgram``).
    """
    if artifact_kind(path, card.artifact_type) == "export":
        from .backbones.datacube import FIELD, DatacubeProgram, dict_argument_keys

        program = load_program(path)
        keys = dict_argument_keys(program)
        if keys is None:
            return ExportedModel(program.module())
        if FIELD not in (card.item.get("properties", {}) if card.item else {}):
            raise ModelError(f"the exported program {path} takes one dict ({', '.join(keys)}), not the chips; "
                             f"model card {card.href} must say what each key receives ({FIELD})")
        return DatacubeProgram(card, program)
    try:
        with torch.device("meta"):
            model = create_backbone(card)
    except ModelError:
        raise
    except Exception:  # construction that computes with real values (``.item()``, numpy)
        model = None
    if model is None or any(_non_persistent_buffers(model)):
        model = create_backbone(card)
        load_weights(model, path)
        return model
    load_weights(model, path, assign=True)
    return model


def _non_persistent_buffers(model: nn.Module):
    for module in model.modules():
        for name in module._non_persistent_buffers_set:
            if getattr(module, name, None) is not None:
                yield name
