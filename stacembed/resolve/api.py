"""STAC API item search with pystac-client, giving the same answer on every server.

A server that does not conform to the Query, Filter or Sort extension gets the search without
that part, and stacembed applies it on the client (with a warning). Some servers conform on
paper and still answer a filter with nothing (``rustac serve``'s in-memory backend returns 0
items and HTTP 200 for any ``filter`` or ``query``): an empty answer to a filtered search is
checked with a probe that must match, and a server caught ignoring the filter is treated as
one that does not conform. Sorting is verified on what comes back for the same reason.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import pystac

from ..access import Access, redact_headers, redact_text
from ..errors import ResolveError
from .filters import ItemFilter, apply, field_value, interval_text, sort_items, sortby_param

log = logging.getLogger("stacembed")

PAGE_SIZE = 100
# Conformance URIs differ between spec versions (pystac-client knows some, servers publish
# others, e.g. pgstac's sort), so a loose match on the extension's name decides.
_CONFORMANCE = {
    "item-search": re.compile(r"/item-search$"),
    "query": re.compile(r"item-search#query$"),
    "filter": re.compile(r"(item-search#filter|/features-3/.*/conf/filter|/filter$)"),
    "sort": re.compile(r"item-search#sort$"),
}


def search_api(url: str, filter: ItemFilter, access: Access, page_size: int = PAGE_SIZE) -> list[pystac.Item]:
    """Items matching ``filter`` at the STAC API ``url``; parts the server can't do run locally."""
    client = open_client(url, access)
    _check_collections(client, filter.collections, url, access)
    server_parts = _server_parts(client, filter, url)
    try:
        items = _search(client, filter, server_parts, page_size)
        for part in ("filter", "query"):
            if part in server_parts and not items and _ignores(client, filter, part):
                log.warning("%s claims to support %s but answers a %s that must match with no items; "
                            "applying --%s on the client", redact_text(url), part, part, part)
                server_parts.discard(part)
                items = _search(client, filter, server_parts, page_size)
        if "sort" in server_parts and not _is_sorted(items, filter):
            log.warning("%s did not sort the results by %s; sorting on the client", redact_text(url),
                        ",".join(f for f, _ in filter.sortby))
            server_parts.discard("sort")
            items = _search(client, filter, server_parts, page_size)
    except _API_ERRORS as exc:
        raise _api_error(exc, url, access) from None
    return items


def open_client(url: str, access: Access):
    """A pystac-client ``Client`` over ``Access.session(url)``: the user's headers for the API's
    origin only (not for hosts its links name), the timeout, retries with backoff."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(max_retries=None, timeout=access.timeout)
    stac_io.session = access.session(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The timeout again: Client.open resets the StacApiIO's to what it is given.
            client = Client.open(url, stac_io=stac_io, timeout=access.timeout)
    except _API_ERRORS as exc:
        raise _api_error(exc, url, access) from None
    if not _conforms(client, "item-search"):
        raise ResolveError(
            f"{redact_text(url)} is not a STAC API with item search (no item-search conformance); "
            "for a static catalog use --catalog"
        )
    return client


def search_parameters(filter: ItemFilter, parts: set[str], page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """pystac-client ``search()`` keyword arguments for the parts done by the server."""
    params: dict[str, Any] = {"limit": page_size}
    if filter.collections:
        params["collections"] = list(filter.collections)
    if filter.intersects:
        params["intersects"] = filter.intersects
    elif filter.bbox:
        params["bbox"] = list(filter.bbox)
    if filter.datetime:
        params["datetime"] = interval_text(filter.datetime)
    if filter.ids:
        params["ids"] = list(filter.ids)
    if filter.query and "query" in parts:
        params["query"] = filter.query
    if filter.filter and "filter" in parts:
        params["filter"] = filter.filter
        params["filter_lang"] = "cql2-json"
    if filter.sortby and "sort" in parts:
        params["sortby"] = sortby_param(filter.sortby)
    return params


def _server_parts(client, filter: ItemFilter, url: str) -> set[str]:
    wanted = {"query": bool(filter.query), "filter": bool(filter.filter), "sort": bool(filter.sortby)}
    parts = set()
    for part, used in wanted.items():
        if not used:
            continue
        if _conforms(client, part):
            parts.add(part)
        else:
            log.warning("%s does not conform to the STAC API %s extension; applying --%s on the client",
                        redact_text(url), part.capitalize(), "sortby" if part == "sort" else part)
    return parts


def _search(client, filter: ItemFilter, server_parts: set[str], page_size: int) -> list[pystac.Item]:
    params = search_parameters(filter, server_parts, page_size)
    local = [p for p in ("query", "filter") if getattr(filter, p) and p not in server_parts]
    all_on_server = not local and (not filter.sortby or "sort" in server_parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = client.search(**params, max_items=filter.max_items if all_on_server else None).items()
        return list(apply(found, filter, local, sort="sort" not in server_parts))


def _ignores(client, filter: ItemFilter, part: str) -> bool:
    """Whether the server answers a ``part`` that must match its first item with nothing."""
    base = search_parameters(ItemFilter(filter.collections, filter.bbox, filter.intersects, filter.datetime,
                                        filter.ids), set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = next(iter(client.search(**base, max_items=1).items()), None)
        if first is None:
            return False  # nothing there even unfiltered: the empty answer is honest
        probe = _probe(first, part)
        if probe is None:
            return False
        return next(iter(client.search(**base, **probe, max_items=1).items()), None) is None


def _probe(item: pystac.Item, part: str) -> dict[str, Any] | None:
    if part == "filter":
        return {"filter": {"op": "=", "args": [{"property": "id"}, item.id]}, "filter_lang": "cql2-json"}
    scalars = [(k, v) for k, v in item.properties.items()
               if isinstance(v, (str, int)) and not isinstance(v, bool) and k != "datetime"]
    if not scalars:
        return None
    name, value = scalars[0]
    return {"query": {name: {"eq": value}}}


def _is_sorted(items: list[pystac.Item], filter: ItemFilter) -> bool:
    keys = [[field_value(i, f) for f, _ in filter.sortby] for i in items]
    expected = [[field_value(i, f) for f, _ in filter.sortby] for i in sort_items(items, filter.sortby)]
    return keys == expected


def _conforms(client, part: str) -> bool:
    pattern = _CONFORMANCE[part]
    return any(pattern.search(uri) for uri in client.get_conforms_to())


def _check_collections(client, collections: tuple[str, ...], url: str, access: Access) -> None:
    if not collections:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            known = {c.id for c in client.get_collections()}
    except _API_ERRORS as exc:
        raise _api_error(exc, url, access) from None
    missing = [c for c in collections if c not in known]
    if missing:
        listed = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
        raise ResolveError(f"collection {missing[0]!r} not found at {redact_text(url)} (it has: {listed or 'none'})")


def _api_errors() -> tuple[type[BaseException], ...]:
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    return (APIError, ClientTypeError, pystac.STACError, pystac.STACTypeError, ValueError, OSError)


_API_ERRORS = _api_errors()


def _api_error(exc: BaseException, url: str, access: Access) -> ResolveError:
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split())
    if "expected type=Catalog" in text or isinstance(exc, pystac.STACTypeError):
        detail = "not a STAC API landing page (for a static catalog use --catalog, for items --items)"
    elif "timed out" in text.lower():  # before "Max retries": a read timeout out of retries says both
        detail = f"no answer within {access.timeout:g} s (--timeout)"
    elif "Max retries exceeded" in text or "Connection refused" in text or "NameResolution" in text:
        detail = "cannot connect (is the URL right and the server up?)"
    elif status:
        detail = f"HTTP {status}: {text[:200]}"
    else:
        detail = text[:200] or type(exc).__name__
    return ResolveError(f"STAC API {redact_text(url)}: {redact_text(redact_headers(detail, access.headers))}")
