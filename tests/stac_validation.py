"""Offline STAC validation for the tests: core schemas by version and type, plus extensions.

The schemas and the validator are the package's (``stacembed/schemas``, ``stacembed.validate``:
released files stored under their canonical URL, see its README), so tests and
``stacembed validate`` check against one copy. Here, an extension whose schema is not bundled is
an error; a ``$ref`` outside the bundle is always one, never a download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stacembed.validate import CORE, check


def validate(document: dict[str, Any]) -> list[str]:
    """Errors of ``document`` against its core schema and each declared extension; [] if valid."""
    report = check(document)
    return [*report.errors, *(f"schema not bundled: {url}" for url in report.unchecked)]


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
