"""The output tree, and how every file stacembed writes gets there.

Two things live here, used by every module that writes:

- **Atomic writes.** ``atomic_path(path)`` hands out a temporary sibling name
  (``.{name}.{pid}.tmp``) and renames it onto ``path`` only when the block succeeds, so a
  reader (or a resumed run) sees the old file or the new one, never half of one; on failure
  the temporary is removed. It serves files and directories alike (an item directory is
  written whole, then renamed). ``write_json`` and ``write_bytes`` build on it.
- **The output tree** (``OutputLayout``), in the spirit of pystac's ``HrefLayoutStrategy``:
  one object answers where the catalog, the collection, each item, its assets, the model card
  copy and a cluster's part files live, which relative hrefs link them, which items are
  finished, and whether a finished item may be kept by a resumed run::

      <root>/catalog.json
      <root>/<collection>/collection.json, items.parquet
      <root>/<collection>/model/<model>.json
      <root>/<collection>/<item>/<item>.json, <item>.parquet, <item>.tif
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError

log = logging.getLogger("stacembed")

SUFFIXES = {"geoparquet": ".parquet", "geotiff": ".tif"}
CATALOG = "catalog.json"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temporary_path(path: Path) -> Path:
    """The sibling name ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary of ``atomic_path`` (finished outputs never are)."""
    return _TEMPORARY.match(path.name) is not None


@contextmanager
def atomic_path(path: Path, *, finished_elsewhere: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Write ``path`` (a file or a directory) under a temporary name, renamed onto it on success.

    Whatever the block leaves at the temporary name replaces ``path`` in one rename; if the
    block raises, it is removed and ``path`` is left as it was. A directory cannot replace a
    finished one: when that rename fails and ``finished_elsewhere()`` says another process
    finished ``path`` first (a cluster task run twice), its copy stands and ours goes.
    """
    tmp = temporary_path(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    try:
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        if finished_elsewhere is None or not finished_elsewhere():
            raise
        log.info("%s was finished by another worker; kept that copy", path.name)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` atomically."""
    write_bytes(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def multihash_sha256(path: Path) -> str:
    """``file:checksum`` value: a multihash of SHA2-256 (code 0x12, length 0x20) in hex."""
    return "1220" + file_sha256(path)


def safe_name(item_id: str) -> str:
    """A filesystem-safe name for an id; ids that need changing get a hash to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).lstrip(".") or "item"
    if safe == item_id:
        return safe
    return f"{safe[:100]}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def catalog_file(out: str | Path) -> Path:
    """The root catalog of the output tree at ``out`` (a run's ``--out``)."""
    return Path(out) / CATALOG


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class OutputLayout:
    """Where every part of a run's output lives under ``root`` (``--out``), and how the parts
    link to each other (relative hrefs, so the tree can be moved or served as it is)."""

    root: Path
    collection_id: str

    # Links of an output item to the documents above it.
    ITEM_LINKS = (("root", "../../catalog.json"), ("parent", "../collection.json"),
                  ("collection", "../collection.json"))
    # Links of the collection to the catalog above it.
    COLLECTION_LINKS = (("root", "../catalog.json"), ("parent", "../catalog.json"))
    CATALOG_SELF = f"./{CATALOG}"

    @property
    def catalog_file(self) -> Path:
        return catalog_file(self.root)

    @property
    def collection_dir(self) -> Path:
        return self.root / self.collection_id

    @property
    def collection_file(self) -> Path:
        return self.collection_dir / "collection.json"

    @property
    def items_parquet(self) -> Path:
        """The stac-geoparquet mirror of the collection's items."""
        return self.collection_dir / "items.parquet"

    def model_card_file(self, card_name: str) -> Path:
        """The copy of the model card that ``emb:model`` links point at."""
        return self.collection_dir / "model" / f"{safe_name(card_name)}.json"

    def item_dir(self, item_id: str) -> Path:
        return self.collection_dir / safe_name(item_id)

    def item_file(self, item_id: str) -> Path:
        name = safe_name(item_id)
        return self.collection_dir / name / f"{name}.json"

    @staticmethod
    def asset_name(item_id: str, fmt: str) -> str:
        """The file name of an item's ``fmt`` asset, inside its item directory."""
        return f"{safe_name(item_id)}{SUFFIXES[fmt]}"

    def parts_dir(self, item_id: str, key: str) -> Path:
        """Where the part files of a split item wait for their merge; ``key`` names the run's
        parameters, so that no run with other parameters takes them."""
        return self.collection_dir / f".parts-{safe_name(item_id)}-{key}"

    def stale_parts(self, item_id: str) -> list[Path]:
        """Every part directory of an item, whatever run made it (dropped once it is finished)."""
        return list(self.collection_dir.glob(f".parts-{safe_name(item_id)}-*"))

    # Relative hrefs between the documents of the tree.
    def collection_href(self) -> str:
        """The collection, from the catalog."""
        return f"./{self.collection_id}/collection.json"

    @staticmethod
    def item_href(item_id: str) -> str:
        """An item, from the collection."""
        name = safe_name(item_id)
        return f"./{name}/{name}.json"

    @staticmethod
    def model_href(card_name: str, *, from_item: bool = True) -> str:
        """The model card copy, from an item (default) or from the collection."""
        return f"{'..' if from_item else '.'}/model/{safe_name(card_name)}.json"

    @staticmethod
    def asset_href(item_id: str, fmt: str) -> str:
        """An item's asset, from the item."""
        return f"./{OutputLayout.asset_name(item_id, fmt)}"

    # The life of the tree during a run.
    def create(self) -> list[Path]:
        """Create the collection directory; returns the directories made here (removed again by
        ``remove_if_empty`` when the run finishes nothing). Temporaries of dead processes go."""
        created = [d for d in (self.collection_dir, self.root) if not d.exists()]
        try:
            self.collection_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output directory {self.collection_dir}: {exc.strerror}") from None
        for stale in self.collection_dir.iterdir():
            match = _TEMPORARY.match(stale.name)
            if match and not _alive(int(match["pid"])):
                _remove(stale)
        return created

    @staticmethod
    def remove_if_empty(directories: list[Path]) -> None:
        """Leave no empty directory made by a run that failed before finishing any item."""
        for directory in directories:
            try:
                directory.rmdir()
            except OSError:
                pass

    @contextmanager
    def writing_item(self, item_id: str) -> Iterator[Path]:
        """A fresh temporary directory for an item's files, renamed into place when the block
        succeeds (see ``atomic_path``; if another process finished the item first, its copy stands)."""
        with atomic_path(self.item_dir(item_id), finished_elsewhere=self.item_file(item_id).is_file) as tmp:
            tmp.mkdir(parents=True)
            yield tmp

    def finished_item(self, item_id: str) -> dict | None:
        """The item document when the item is finished (its directory was renamed into place)."""
        path = self.item_file(item_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def resumable(self, item_id: str, parameters: dict[str, Any]) -> bool:
        """Whether ``item_id`` is finished with these runtime parameters, so a rerun keeps it.

        An item finished with other parameters is an error, not something to overwrite.
        """
        item = self.finished_item(item_id)
        if item is None:
            return False
        previous = item["properties"].get("emb:runtime_parameters", {})
        differing = sorted(k for k in parameters if k != "weights_sha256" and previous.get(k) != parameters[k])
        if previous.get("weights_sha256") != parameters.get("weights_sha256"):
            differing.append("weights")
        if differing:
            raise OutputError(
                f"{self.collection_dir} already holds item {safe_name(item_id)} made with other parameters "
                f"({', '.join(differing)}); use another --out or --output-collection"
            )
        return True

    def finished_items(self) -> Iterator[dict]:
        """Every finished item's document, in directory name order."""
        for item_file in sorted(self.collection_dir.glob("*/*.json")):
            directory = item_file.parent.name
            if directory.startswith(".") or directory == "model":
                continue
            if item_file.stem == directory:
                yield json.loads(item_file.read_text())
