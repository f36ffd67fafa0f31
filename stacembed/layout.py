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

import errno
import fcntl
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

from .errors import ConfigError, OutputError

log = logging.getLogger("stacembed")

SUFFIXES = {"geoparquet": ".parquet", "geotiff": ".tif"}
CATALOG = "catalog.json"
NAME_MAX = 200  # longest name from an id: room for ".<name>.<pid>.tmp" and ".scratch.parquet"
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

    Whatever the block leaves at the temporary name is flushed to disk (``fsync`` of every file,
    then of the directories) and replaces ``path`` in one rename, so that after a crash or a full
    disk a finished name never holds half-written data; if the block raises, the temporary is
    removed and ``path`` is left as it was. A full disk is one line (``OutputError``), wherever
    in the block it struck. A directory cannot replace a finished one: when that rename fails
    and ``finished_elsewhere()`` says another process finished ``path`` first (a cluster task
    run twice), its copy stands and ours goes (``finished_elsewhere`` raises if that copy was
    made differently).
    """
    tmp = temporary_path(path)
    _remove(tmp)
    try:
        yield tmp
        _sync(tmp)
    except BaseException as exc:
        _remove(tmp)
        if _disk_full(exc):
            raise OutputError(f"no space left on the device of {path.parent} while writing {path.name}; "
                              "free some space and run again: finished items are kept") from None
        raise
    try:
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        if finished_elsewhere is None or not finished_elsewhere():
            raise
        log.info("%s was finished by another worker; kept that copy", path.name)
    _sync_directory(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``); a file that holds these bytes
    already is left alone, so a run that changes nothing writes nothing (a read-only finished
    output can be checked by a rerun)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
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
    """A filesystem-safe name for an id: ids that need changing, or that are longer than
    ``NAME_MAX`` (file names end at 255 bytes, and the temporaries and file suffixes need some),
    get a hash of the full id to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).lstrip(".") or "item"
    if safe == item_id and len(safe) <= NAME_MAX:
        return safe
    return f"{safe[:NAME_MAX - 9]}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def catalog_file(out: str | Path) -> Path:
    """The root catalog of the output tree at ``out`` (a run's ``--out``)."""
    return Path(out) / CATALOG


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: ENOSPC, or the message of a library that wrote
    through its own I/O layer (pyarrow, GDAL) and kept only the text."""
    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in text or "Free disk space" in text


def _sync(path: Path) -> None:
    """Flush ``path`` to disk: a file, or a directory's files and then the directory."""
    if path.is_dir():
        for child in path.iterdir():
            _sync(child)
        _sync_directory(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and platforms) do not sync directories
    finally:
        os.close(fd)


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

    def __post_init__(self) -> None:
        if safe_name(self.collection_id) != self.collection_id:
            raise ConfigError(f"output collection {self.collection_id!r} is not a plain directory name: use letters, "
                              "digits, '.', '_' and '-', not starting with '.'")

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

    def writes(self, path: Path) -> bool:
        """Whether a run with this layout may write (or replace) ``path``."""
        path, collection_dir = path.resolve(), self.collection_dir.resolve()
        return path == self.catalog_file.resolve() or path == collection_dir or collection_dir in path.parents

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
        """Create the collection directory; returns it when made here (removed again by
        ``remove_if_empty`` when the run finishes nothing). Temporaries of dead processes go."""
        created = [] if self.collection_dir.exists() else [self.collection_dir]
        try:
            self.collection_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output directory {self.collection_dir}: {exc.strerror}") from None
        model_dir = self.model_card_file("model").parent
        for directory in (self.root, self.collection_dir, model_dir, *self.collection_dir.glob(".parts-*")):
            remove_stale_temporaries(directory)
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
    def writing_item(self, item_id: str, parameters: dict[str, Any]) -> Iterator[Staging]:
        """A fresh temporary directory for an item's files, renamed into place when the block
        succeeds (see ``atomic_path``). If another process finished the item first with the same
        ``parameters``, its copy stands and ``Staging.kept`` turns False; with other parameters,
        that is an error."""
        staging = Staging(temporary_path(self.item_dir(item_id)))

        def finished_elsewhere() -> bool:
            staging.kept = not self.resumable(item_id, parameters)
            return not staging.kept

        with atomic_path(self.item_dir(item_id), finished_elsewhere=finished_elsewhere) as tmp:
            tmp.mkdir(parents=True)
            yield staging

    def finished_item(self, item_id: str) -> dict | None:
        """The item document when the item is finished (its directory was renamed into place)."""
        path = self.item_file(item_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def resumable(self, item_id: str, parameters: dict[str, Any], *, verify: bool = False) -> bool:
        """Whether ``item_id`` is finished with these runtime parameters, so a rerun keeps it.

        An item finished with other parameters is an error, not something to overwrite. What is
        kept is checked first: every asset file must have the size its item records (and, with
        ``verify``, the checksum); a damaged item is removed, to be embedded again.
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
        damage = self._damage(item_id, item, verify)
        if damage:
            log.warning("item %s in %s is damaged (%s): embedding it again", item_id, self.collection_dir, damage)
            _remove(self.item_dir(item_id))
            return False
        return True

    def _damage(self, item_id: str, item: dict, verify: bool) -> str | None:
        """What is wrong with a finished item's asset files, if anything."""
        for key, asset in item.get("assets", {}).items():
            path = self.item_dir(item_id) / asset["href"]
            try:
                size = path.stat().st_size
            except OSError:
                return f"asset {key!r} is missing"
            if "file:size" in asset and size != asset["file:size"]:
                return f"asset {key!r} has {size} bytes, its item records {asset['file:size']}"
            if verify and "file:checksum" in asset and multihash_sha256(path) != asset["file:checksum"]:
                return f"asset {key!r} does not match its checksum"
        return None

    def finished_items(self) -> Iterator[dict]:
        """Every finished item's document, in directory name order."""
        for item_file in sorted(self.collection_dir.glob("*/*.json")):
            directory = item_file.parent.name
            if directory.startswith(".") or directory == "model":
                continue
            if item_file.stem == directory:
                yield json.loads(item_file.read_text())


@dataclass
class Staging:
    """An item being written: its files go into ``path``; ``kept`` is False when another process
    finished the same item first and its copy stood (this one's work was thrown away)."""

    path: Path
    kept: bool = True


@contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """Hold an advisory lock on the output directory ``root`` for a run: a second run into the
    same ``--out`` is refused with one line instead of mixing its items with this one's.

    The lock is ``flock`` on the directory itself (no lock file to leave behind or to race on),
    released when the run ends or its process dies. Where the filesystem cannot lock (some
    network filesystems), the run goes on with a warning. A directory made here and left empty
    is removed again.
    """
    made = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {root}: {exc.strerror}") from None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another stacembed run is writing to {root}; wait for it to finish, "
                              "or use another --out") from None
        except OSError as exc:
            log.warning("cannot lock %s (%s): concurrent runs into it are not prevented", root, exc.strerror)
        yield
    finally:
        os.close(fd)
        if made:
            OutputLayout.remove_if_empty([root])


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporaries of processes that died while writing into ``directory``."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and not _alive(int(match["pid"])):
            _remove(entry)
