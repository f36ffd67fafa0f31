"""Validate STAC documents offline against the JSON schemas bundled with the package.

``stacembed/schemas`` holds the released schemas (core STAC 1.0.0 and 1.1.0, the extensions
stacembed writes or keeps from its sources, and what they ``$ref``), stored under their
canonical URL (see its README). A document is checked against its core schema, by type and
``stac_version``, and against every extension it declares; a ``$ref`` outside the bundle is an
error, never a download. An extension whose schema is not bundled is reported as not checked.

Why not pystac's ``validate_all`` on the objects it read: pystac migrates every object to STAC
1.1.0 when it reads it, and validates what it would write, while the Embeddings extension
v0.0.1 schema requires ``"stac_version": "1.0.0"``; so its object validation fails on any
embeddings document. ``pystac.validation.validate_all(dict, href)`` checks the documents as
written, and takes this bundle as its schema cache (``bundled_schemas``) to run offline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SCHEMAS = Path(__file__).parent / "schemas"
CORE = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}
STAC_VERSIONS = ("1.0.0", "1.1.0")
# Links from a catalog or collection file to the documents below it, followed when it is validated.
_CHILD_RELS = ("child", "item")


@dataclass(frozen=True)
class Report:
    """The outcome for one document: ``errors`` (the most relevant first), and the declared
    extensions that could not be checked because their schema is not bundled."""

    path: str
    errors: tuple[str, ...]
    unchecked: tuple[str, ...] = ()

    def line(self, *, strict: bool = False) -> str | None:
        """One line for an invalid document (``strict``: unchecked extensions count), else None."""
        errors = [*self.errors, *(f"schema not bundled: {url}" for url in self.unchecked if strict)]
        if not errors:
            return None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{self.path}: {errors[0]}{more}"


@functools.cache
def _bundle() -> dict[str, dict[str, Any]]:
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in SCHEMAS.rglob("*") if p.is_file() and p.name != "README.md"):
        schema = json.loads(path.read_text())
        url = "https://" + path.relative_to(SCHEMAS).as_posix()
        names = {url, url.replace("https://json-schema.org", "http://json-schema.org")}
        if isinstance(schema, dict) and "$id" in schema:
            names |= {schema["$id"], schema["$id"].rstrip("#")}
        for name in names:
            schemas[name] = schema
    return schemas


def bundled_schemas() -> dict[str, dict[str, Any]]:
    """Every bundled schema by its URL (and its ``$id``), e.g. for pystac's offline validation:
    ``JsonSchemaSTACValidator().schema_cache.update(bundled_schemas())``."""
    return dict(_bundle())


@functools.cache
def _registry():
    from referencing import Registry, Resource
    from referencing.exceptions import NoSuchResource
    from referencing.jsonschema import DRAFT7

    def refuse(uri: str) -> Resource:
        raise NoSuchResource(ref=uri)

    resources = [(name, Resource.from_contents(s, default_specification=DRAFT7)) for name, s in _bundle().items()]
    return Registry(retrieve=refuse).with_resources(resources)


@functools.cache
def _validator(url: str):
    from jsonschema.validators import validator_for

    schemas = _bundle()
    schema = schemas.get(url) or schemas.get(url.rstrip("#"))
    if schema is None:
        return None
    return validator_for(schema)(schema, registry=_registry())


def schema_urls(document: dict[str, Any]) -> list[str] | None:
    """The core schema and the extension schemas ``document`` is checked against; None when it
    is not a STAC Item, Collection or Catalog of a version the bundle covers."""
    kind, version = document.get("type"), document.get("stac_version")
    if kind not in CORE or version not in STAC_VERSIONS:
        return None
    extensions = document.get("stac_extensions") or []
    return [f"https://schemas.stacspec.org/v{version}/{CORE[kind]}", *extensions]


def check(document: Any, path: str = "") -> Report:
    """Validate one STAC document (a dict) against the bundled schemas."""
    from jsonschema.exceptions import relevance

    urls = schema_urls(document) if isinstance(document, dict) else None
    if urls is None:
        kind = document.get("type") if isinstance(document, dict) else type(document).__name__
        version = document.get("stac_version") if isinstance(document, dict) else None
        return Report(path, (f"not a STAC {'/'.join(STAC_VERSIONS)} Item, Collection or Catalog "
                             f"(type={kind!r}, stac_version={version!r})",))
    errors, unchecked = [], []
    for url in urls:
        validator = _validator(url)
        if validator is None:
            unchecked.append(url)
            continue
        for error in sorted(validator.iter_errors(document), key=relevance, reverse=True):
            errors.append(f"{_deepest(error).json_path}: {_deepest(error).message[:300]} [{url}]")
    return Report(path, tuple(errors), tuple(unchecked))


def _deepest(error):
    """The error that says what is wrong, for an error of ``oneOf``/``anyOf`` (which only says
    that no branch matched): the most relevant one of the branch that failed least (for the
    Embeddings schema's Item or Collection branch: the document's own kind)."""
    from jsonschema.exceptions import relevance

    while error.context:
        branches: dict[Any, list] = {}
        for cause in error.context:
            branches.setdefault(cause.relative_schema_path[0], []).append(cause)
        error = max(min(branches.values(), key=len), key=relevance)
    return error


def validate_paths(paths: Iterable[str | Path]) -> Iterator[Report]:
    """Validate every STAC document at ``paths``, each reported once.

    A directory: every STAC JSON document under it (hidden entries, such as a run's temporaries,
    are skipped; JSON files that are not STAC are not reported). A file: that document and,
    for a catalog or collection, the local documents its ``child`` and ``item`` links reach.
    """
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for found in sorted(path.rglob("*.json")):
                if any(part.startswith(".") for part in found.relative_to(path).parts):
                    continue
                document = _read(found)
                if isinstance(document, dict) and "stac_version" in document and found.resolve() not in seen:
                    seen.add(found.resolve())
                    yield check(document, str(found))
        else:
            yield from _walk(path, str(given), seen)


def _walk(path: Path, shown: str, seen: set[Path]) -> Iterator[Report]:
    if path.resolve() in seen:
        return
    seen.add(path.resolve())
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        yield Report(shown, (f"cannot read as JSON: {str(exc).splitlines()[0]}",))
        return
    report = check(document, shown)
    below: list[Path] = []
    if isinstance(document, dict) and document.get("type") in ("Catalog", "Collection"):
        missing = []
        for link in document.get("links") or []:
            href = link.get("href") if isinstance(link, dict) else None
            if link.get("rel") not in _CHILD_RELS or not isinstance(href, str):
                continue
            if urlparse(href).scheme not in ("", "file"):
                continue  # offline: remote documents are not fetched
            target = Path(urlparse(href).path if href.startswith("file:") else href)
            target = target if target.is_absolute() else path.parent / target
            if target.is_file():
                below.append(target)
            else:
                missing.append(f"{link['rel']} link {href}: no such file")
        report = Report(shown, (*report.errors, *missing), report.unchecked)
    yield report
    for target in below:
        yield from _walk(target, str(target), seen)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
