"""Offline STAC validation for the tests: core schemas by version and type, plus extensions.

Every schema comes from ``tests/schemas`` (released files stored under their canonical URL,
see its README); a ``$ref`` outside the bundle is an error, never a download.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

SCHEMAS = Path(__file__).parent / "schemas"
CORE = {
    "Feature": "item-spec/json-schema/item.json",
    "Collection": "collection-spec/json-schema/collection.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
}


def _refuse(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)


@functools.cache
def _registry() -> tuple[Registry, dict[str, dict]]:
    schemas: dict[str, dict] = {}
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        url = "https://" + path.relative_to(SCHEMAS).as_posix()
        names = {url, url.replace("https://json-schema.org", "http://json-schema.org")}
        if isinstance(schema, dict) and "$id" in schema:
            names |= {schema["$id"], schema["$id"].rstrip("#")}
        for name in names:
            schemas[name] = schema
    resources = [(name, Resource.from_contents(s, default_specification=DRAFT7)) for name, s in schemas.items()]
    return Registry(retrieve=_refuse).with_resources(resources), schemas


@functools.cache
def _validator(url: str):
    registry, schemas = _registry()
    schema = schemas.get(url) or schemas.get(url.rstrip("#"))
    if schema is None:
        return None
    return validator_for(schema)(schema, registry=registry)


def validate(document: dict[str, Any]) -> list[str]:
    """Errors of ``document`` against its core schema and each declared extension; [] if valid."""
    kind, version = document.get("type"), document.get("stac_version")
    if kind not in CORE or version not in ("1.0.0", "1.1.0"):
        return [f"not a STAC 1.0.0/1.1.0 Item, Collection or Catalog (type={kind!r}, stac_version={version!r})"]
    urls = [f"https://schemas.stacspec.org/v{version}/{CORE[kind]}", *document.get("stac_extensions", [])]
    errors = []
    for url in urls:
        validator = _validator(url)
        if validator is None:
            errors.append(f"schema not bundled: {url}")
            continue
        for error in validator.iter_errors(document):
            errors.append(f"{url}: {error.json_path}: {error.message[:300]}")
    return errors


def validate_file(path: str | Path) -> list[str]:
    return validate(json.loads(Path(path).read_text()))


def validate_tree(root: str | Path) -> dict[Path, list[str]]:
    """Validate every STAC JSON document under ``root`` (other JSON files are skipped)."""
    results = {}
    for path in sorted(Path(root).rglob("*.json")):
        document = json.loads(path.read_text())
        if isinstance(document, dict) and "stac_version" in document and document.get("type") in CORE:
            results[path] = validate(document)
    return results
