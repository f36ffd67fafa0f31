"""How to reach remote things: HTTP headers, timeouts, retries, GDAL options and href signing.

One ``Access`` object carries them to the two places that talk to the network: the STAC API
client (pystac-client, over ``requests``) and GDAL, which reads the assets. Credentials
live only in memory here; ``redact`` is what every message and published document that
mentions a URL goes through, so a token never reaches a log or a STAC item.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pystac

from .errors import ConfigError

HEADERS_ENV = "STACEMBED_HEADERS"
# The least GDAL block cache a read gets (see ``feed.FeedSpec.batches`` for the sizing).
DEFAULT_CACHE_BYTES = 128 * 2**20
SIGNERS = ("planetary-computer",)

# Query parameters that carry credentials in signed URLs (Azure SAS, S3 presigned, tokens).
_SECRET_PARAMS = re.compile(
    r"^(sig|se|st|sp|sv|sr|skoid|sktid|skt|ske|sks|skv|token|access_token|api_key|apikey|key|"
    r"x-amz-.*|x-goog-.*|signature|policy|key-pair-id)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Access:
    """Network settings shared by the API client and the asset reader."""

    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    retries: int = 3
    gdal: Mapping[str, str] = field(default_factory=dict)
    signer: str | None = None
    aws_unsigned: bool = False
    requester_pays: bool = False

    def __post_init__(self) -> None:
        if self.signer is not None and self.signer not in SIGNERS:
            raise ConfigError(f"--sign must be one of {', '.join(SIGNERS)}; got {self.signer!r}")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")

    def gdal_options(self) -> dict[str, str | int]:
        """GDAL config options for reading assets: timeouts, retries with backoff, S3 access, headers."""
        options: dict[str, str | int] = {
            "GDAL_HTTP_TIMEOUT": str(int(max(1, self.timeout))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": "1",
        }
        # Paths such as a cookie file may be written with ~; GDAL does not expand it.
        options.update({k: os.path.expanduser(str(v)) if str(v).startswith("~") else str(v)
                        for k, v in self.gdal.items()})
        if self.aws_unsigned:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        if self.requester_pays:
            options["AWS_REQUEST_PAYER"] = "requester"
        if self.headers:
            options["GDAL_HTTP_HEADERS"] = "\r\n".join(f"{k}: {v}" for k, v in self.headers.items())
        if "GDAL_CACHEMAX" in options:
            options["GDAL_CACHEMAX"] = cache_bytes(options["GDAL_CACHEMAX"])
        return options

    def sign(self, item: pystac.Item) -> pystac.Item:
        """Sign the item's asset hrefs when the source needs it (e.g. Planetary Computer SAS tokens)."""
        if self.signer is None:
            return item
        return _signer(self.signer)(item)

    def with_defaults(self, gdal: Mapping[str, str], signer: str | None) -> Access:
        """A copy completed with a preset's needs; what the user set explicitly wins."""
        return Access(
            headers=self.headers, timeout=self.timeout, retries=self.retries,
            gdal={**gdal, **self.gdal}, signer=self.signer or signer,
            aws_unsigned=self.aws_unsigned, requester_pays=self.requester_pays,
        )


def parse_headers(values: tuple[str, ...] | list[str] | Mapping[str, str],
                  env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``KEY=VALUE`` strings (flags) plus ``STACEMBED_HEADERS`` (one ``KEY=VALUE`` per line)."""
    if isinstance(values, Mapping):
        pairs = [f"{k}={v}" for k, v in values.items()]
    else:
        pairs = list(values)
    from_env = [line for line in env.get(HEADERS_ENV, "").splitlines() if line.strip()]
    headers: dict[str, str] = {}
    for pair in from_env + pairs:
        # KEY=VALUE, or curl's "KEY: VALUE": whichever separator comes first.
        cut = min((i for i in (pair.find("="), pair.find(":")) if i > 0), default=-1)
        if cut < 0:
            # Never echo the text: it is likely a credential.
            raise ConfigError("--header needs KEY=VALUE (or 'KEY: VALUE'), e.g. Authorization='Bearer ...'")
        headers[pair[:cut].strip()] = pair[cut + 1:].strip()
    return headers


def parse_options(values: tuple[str, ...] | list[str] | Mapping[str, Any]) -> dict[str, str]:
    """``KEY=VALUE`` GDAL config options (``--gdal``)."""
    if isinstance(values, Mapping):
        return {str(k): str(v) for k, v in values.items()}
    options = {}
    for pair in values:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--gdal needs KEY=VALUE, e.g. AWS_REGION=us-west-2; got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def redact(url: str) -> str:
    """A URL safe to print or publish: no user:password, no signature or token parameters."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(k, "REDACTED" if _SECRET_PARAMS.match(k) else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/:"), parts.fragment))


def redact_headers(text: str, headers: Mapping[str, str]) -> str:
    """Remove header values (tokens) from a message that may echo them, e.g. a server error."""
    for value in headers.values():
        if len(value) >= 4:
            text = text.replace(value, "REDACTED")
    return text


def _signer(name: str) -> Callable[[pystac.Item], pystac.Item]:
    if name == "planetary-computer":
        try:
            import planetary_computer
        except ImportError:
            raise ConfigError(
                "--sign planetary-computer needs the planetary-computer package: "
                "pip install 'stacembed[planetary-computer]'"
            ) from None
        return planetary_computer.sign_item
    raise ConfigError(f"unknown signer {name!r}")


def cache_bytes(value: str | int | None) -> int:
    """``GDAL_CACHEMAX`` as bytes (rasterio wants an int): GDAL's spellings ``512`` (MB below
    100000, else bytes), ``512MB``, ``2GB`` and ``10%`` (of RAM); ``None`` is ``DEFAULT_CACHE_BYTES``."""
    if value is None or value == "":
        return DEFAULT_CACHE_BYTES
    text = str(value).strip().upper()
    try:
        if text.endswith("%"):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return int(total * float(text[:-1]) / 100)
        for suffix, unit in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * unit)
        number = int(float(text))
    except ValueError:
        raise ConfigError(f"GDAL_CACHEMAX must be a size such as 512MB, 2GB or 10%; got {value!r}") from None
    return number * 2**20 if number < 100000 else number
