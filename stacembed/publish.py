"""Publish a finished output catalog to a STAC API through the Transactions extension.

Publishing is an upsert: a collection or item the API already has is replaced (POST answers
409, then PUT), so re-publishing a run updates it and never duplicates an item. Relative
asset and link hrefs are rewritten against ``asset_base_href`` (where the files were
uploaded), because relative hrefs mean nothing once the JSON lives in a database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pystac
import requests

from .access import Access, redact_headers, redact_text
from .errors import PublishError
from .layout import catalog_file

log = logging.getLogger("stacembed")

# Links the API makes itself; publishing ours would point into the local directory tree.
_SERVER_LINKS = {"self", "root", "parent", "child", "item", "items", "collection"}


def publish_catalog(catalog: str | Path, api: str, *, asset_base_href: str | None, access: Access = Access()) -> int:
    """Create or update every collection and item of ``catalog`` on ``api``; returns the item count."""
    root = _read_catalog(catalog)
    root_dir = Path(root.get_self_href()).parent
    if not asset_base_href:
        raise PublishError("publishing needs --asset-base-href: the URL where the catalog's files are served")
    rewrite = _Rewriter(root_dir, asset_base_href.rstrip("/"))
    api = api.rstrip("/")
    session = access.session(api)  # retries with backoff; --header for the API's origin only
    _check_transactions(session, api, access)
    count = 0
    for collection in root.get_all_collections():
        coll_url = f"{api}/collections"
        _upsert(session, coll_url, f"{coll_url}/{quote(collection.id, safe='')}",
                rewrite.document(collection), access)
        items_url = f"{coll_url}/{quote(collection.id, safe='')}/items"
        for item in collection.get_items():
            item.collection_id = collection.id
            _upsert(session, items_url, f"{items_url}/{quote(item.id, safe='')}", rewrite.document(item), access)
            count += 1
        log.info("published collection %s (%d items) to %s", collection.id, count, redact_text(api))
    return count


class _Rewriter:
    """Turns a local document's relative hrefs into URLs under the base where the files live."""

    def __init__(self, root_dir: Path, base: str) -> None:
        self.root_dir = root_dir.resolve()
        self.base = base

    def document(self, obj: pystac.Collection | pystac.Item) -> dict[str, Any]:
        data = obj.to_dict(include_self_link=False, transform_hrefs=False)
        doc_dir = Path(obj.get_self_href()).parent
        for asset in data.get("assets", {}).values():
            asset["href"] = self.href(asset["href"], doc_dir)
        links = [link for link in data.get("links", []) if link.get("rel") not in _SERVER_LINKS]
        for link in links:
            link["href"] = self.href(link["href"], doc_dir)
        data["links"] = links
        return data

    def href(self, href: str, doc_dir: Path) -> str:
        if "://" in href or href.startswith("/"):
            return href
        local = (doc_dir / href).resolve()
        try:
            relative = local.relative_to(self.root_dir)
        except ValueError:
            return str(local)  # outside the catalog: nothing was uploaded there
        return f"{self.base}/{relative.as_posix()}"


def _read_catalog(catalog: str | Path) -> pystac.Catalog:
    path = Path(catalog)
    if path.is_dir():
        path = catalog_file(path)
    if not path.is_file():
        raise PublishError(f"{path} does not exist; publish the directory a `stacembed run --out` wrote")
    try:
        root = pystac.Catalog.from_file(str(path))
    except (pystac.STACError, pystac.STACTypeError, ValueError, KeyError) as exc:
        raise PublishError(f"cannot read STAC catalog {path}: {exc}") from None
    root.set_self_href(str(path.resolve()))
    return root


def _check_transactions(session: requests.Session, api: str, access: Access) -> None:
    landing = _call(session, "GET", api, access)
    conforms = (landing.json() or {}).get("conformsTo", []) if landing.ok else []
    if not any("transaction" in uri for uri in conforms):
        raise PublishError(
            f"{redact_text(api)} does not conform to the STAC API Transactions extension; "
            "it cannot take new collections or items"
        )


def _upsert(session: requests.Session, create_url: str, update_url: str, data: dict[str, Any], access: Access) -> None:
    what = f"{data['type'].lower()} {data['id']!r}"
    response = _call(session, "POST", create_url, access, json=data)
    if response.status_code == 409:
        response = _call(session, "PUT", update_url, access, json=data)
    if not response.ok:
        body = redact_text(redact_headers(" ".join(response.text.split())[:300], access.headers))
        raise PublishError(f"{redact_text(create_url)} refused {what}: HTTP {response.status_code} {body}")


def _call(session: requests.Session, method: str, url: str, access: Access, **kwargs: Any) -> requests.Response:
    try:
        return session.request(method, url, timeout=access.timeout, **kwargs)
    except requests.RequestException as exc:
        kind = "no answer in time" if isinstance(exc, requests.Timeout) else "cannot connect"
        raise PublishError(f"STAC API {redact_text(url)}: {kind} ({type(exc).__name__})") from None

