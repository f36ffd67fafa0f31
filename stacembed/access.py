"""How to reach remote things: HTTP headers, timeouts, retries, GDAL options, href signing, and
what of a URL may be shown or written.

One ``Access`` object carries them to the two kinds of network use: STAC JSON (pystac-client
for APIs, ``stac_io`` for static catalogs and item files, ``publish``), always through the one
requests session ``Access.session`` builds (retries with backoff, ``--timeout``), and GDAL,
which reads the assets (``Access.gdal_options``).

Headers are scoped. ``headers`` (``--header``) go only to the origin of the URL a session is
made for (the STAC API, catalog or item file named on the command line, or ``--publish``),
never to another host its documents link to, nor to GDAL; ``asset_headers``
(``--asset-header``) go to GDAL, for every asset read. rasterio does not expose GDAL's
path-specific options (``VSISetPathSpecificOption``), so GDAL headers cannot be scoped to a host.

Two redactions, both here: ``redact_text`` is what a message shows of URLs (scheme, host and
path; every query value, any userinfo, known header values and the credentials GDAL and s3fs
are given, ``credential_values``, masked as ``***``), applied to
every log record of stacembed and the network libraries (``install_log_redaction``; GDAL's
messages come through rasterio's loggers) and to the CLI's errors; ``redact`` is what an href
written to an output becomes (no userinfo and no query, unless the query is kept on request).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pystac
import requests
from pystac.stac_io import DefaultStacIO
from requests.adapters import HTTPAdapter
from urllib3 import Retry

from .errors import ConfigError

HEADERS_ENV = "STACEMBED_HEADERS"
ASSET_HEADERS_ENV = "STACEMBED_ASSET_HEADERS"
# The least GDAL block cache a read gets (see ``feed.FeedSpec.batches`` for the sizing).
DEFAULT_CACHE_BYTES = 128 * 2**20
SIGNERS = ("planetary-computer",)
# HTTP answers worth another try (with exponential backoff), for requests and GDAL alike.
RETRY_STATUSES = (429, 500, 502, 503, 504)
# GDAL also retries "0": no HTTP answer at all (a dropped connection, curl's "Empty reply from
# server", a reset or a timeout). Without a list GDAL retries only a few curl errors it knows
# by their text, and a dropped connection is not one of them.
GDAL_RETRY_CODES = ",".join(str(code) for code in (0, *RETRY_STATUSES))
MASK = "***"

# Query parameters known to carry credentials in signed URLs (Azure SAS, S3 presigned, tokens):
# dropped from hrefs written to outputs even when the user keeps the query (``redact``).
_SECRET_PARAMS = re.compile(
    r"^(sig|se|st|sp|sv|sr|skoid|sktid|skt|ske|sks|skv|token|access_token|api_key|apikey|key|auth|"
    r"x-amz-.*|x-goog-.*|signature|policy|key-pair-id)$",
    re.IGNORECASE,
)
# In free text: userinfo after a scheme, the value of every query (or fragment) parameter (less
# the punctuation of the sentence around it), and HTTP credentials as a server may echo them.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>]+@")
_PARAM_VALUE = re.compile(r"(?P<key>[?&#][^\s=&#?'\"<>]+)=[^\s&#'\"<>]*?(?=[.,;:)\]]*(?:[\s&#'\"<>]|$))")
# GDAL config options (and environment variables) whose values are credentials.
_CREDENTIAL_OPTION = re.compile(r"^(AWS|GS|GOOGLE|AZURE|OSS|SWIFT|GDAL_HTTP)_(\w*_)?"
                                r"(SECRET|TOKEN|PASSWORD|USERPWD|BEARER|CONNECTION_STRING|KEY)$", re.IGNORECASE)
_CREDENTIALS = re.compile(r"\b(?P<scheme>Basic|Bearer) [A-Za-z0-9\-._~+/]{8,}=*")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Header values in use in this process, longest first, masked wherever a message repeats them (a
# server echoing the request); only values long enough not to be words. Replaced, never mutated,
# so that threads logging meanwhile read a consistent tuple.
_secrets: tuple[str, ...] = ()
_LOCK = threading.Lock()
# The loggers whose records may hold URLs: stacembed's own and those of the libraries that talk
# to the network for it (GDAL's messages are logged by rasterio._env and rasterio._err; s3fs's
# requests by botocore, whose debug records hold every header sent, a session token's included).
_REDACTED_LOGGERS = frozenset({"stacembed", "rasterio", "pystac", "pystac_client", "urllib3", "requests",
                               "stackstac", "odc", "fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp", "zarr"})


@dataclass(frozen=True)
class Access:
    """Network settings shared by the STAC JSON readers and the asset reader."""

    headers: Mapping[str, str] = field(default_factory=dict)  # to the STAC API/catalog's origin only
    timeout: float = 30.0
    retries: int = 3
    gdal: Mapping[str, str] = field(default_factory=dict)
    signer: str | None = None
    aws_unsigned: bool = False
    requester_pays: bool = False
    asset_headers: Mapping[str, str] = field(default_factory=dict)  # to every asset read (GDAL)

    def __post_init__(self) -> None:
        if self.signer is not None and self.signer not in SIGNERS:
            raise ConfigError(f"--sign must be one of {', '.join(SIGNERS)}; got {self.signer!r}")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        refused = [key for key in self.gdal if key.upper() in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        if refused:  # rasterio.Env raises on them; and never echo the value
            raise ConfigError(f"--gdal {refused[0]}: S3 credentials are read from the environment "
                              "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or an AWS profile "
                              "(AWS_PROFILE), not from GDAL options")
        remember_secrets(self.headers.values(), self.asset_headers.values(), credential_values(self.gdal))

    def gdal_options(self) -> dict[str, str | int]:
        """GDAL config options for reading assets: timeouts, retries with backoff (dropped
        connections too), S3 access, ``asset_headers``. ``headers`` are never among them: GDAL
        would send them to every host an item names.

        Also makes sure, in this process (a cluster worker's too), that GDAL's messages are
        masked on their way through rasterio's loggers (``install_log_redaction``).
        """
        install_log_redaction()
        # A copy unpickled on a worker, whose environment may hold other credentials.
        remember_secrets(self.headers.values(), self.asset_headers.values(), credential_values(self.gdal))
        options: dict[str, str | int] = {
            "GDAL_HTTP_TIMEOUT": str(int(max(1, self.timeout))),
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": "1",
            "GDAL_HTTP_RETRY_CODES": GDAL_RETRY_CODES,
        }
        # Paths such as a cookie file may be written with ~; GDAL does not expand it.
        options.update({k: os.path.expanduser(str(v)) if str(v).startswith("~") else str(v)
                        for k, v in self.gdal.items()})
        if self.aws_unsigned:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        if self.requester_pays:
            options["AWS_REQUEST_PAYER"] = "requester"
        if self.asset_headers:
            options["GDAL_HTTP_HEADERS"] = "\r\n".join(f"{k}: {v}" for k, v in self.asset_headers.items())
        if "GDAL_CACHEMAX" in options:
            options["GDAL_CACHEMAX"] = cache_bytes(options["GDAL_CACHEMAX"])
        return options

    def session(self, url: str | None = None) -> requests.Session:
        """The requests session for STAC JSON at ``url`` (an API, a catalog, an item file, a
        publishing API): ``retries`` with exponential backoff on connection errors, dropped
        connections, 429 and 5xx; ``timeout`` on every request that sets none; ``headers`` (and
        Basic credentials from ``url``'s userinfo) on requests to ``url``'s origin only, taken
        off a redirect elsewhere. The one place such a session is made."""
        install_log_redaction()
        return _ScopedSession(self, url)

    def stac_io(self, url: str | None = None) -> pystac.StacIO:
        """A pystac ``StacIO`` reading http(s) through ``session(url)`` (local files as pystac does)."""
        return SessionStacIO(self.session(url))

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
            aws_unsigned=self.aws_unsigned, requester_pays=self.requester_pays, asset_headers=self.asset_headers,
        )


class _ScopedSession(requests.Session):
    """A session whose headers belong to one origin (see ``Access.session``)."""

    def __init__(self, access: Access, url: str | None) -> None:
        super().__init__()
        retry = Retry(total=access.retries, backoff_factor=0.5, status_forcelist=RETRY_STATUSES,
                      allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.timeout = access.timeout
        self.origin = origin(url) if url else None
        self.scoped = dict(access.headers)
        userinfo = urlsplit(url).netloc.rpartition("@")[0] if url and "://" in url else ""
        if userinfo and not any(k.lower() == "authorization" for k in self.scoped):
            # requests sends a URL's userinfo only to that URL; links the server gives (the next
            # page) have none, so the credentials go with the origin's other requests too.
            user, _, password = userinfo.partition(":")
            token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
            self.scoped["Authorization"] = f"Basic {token}"
        remember_secrets(self.scoped.values())

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        self._scope(prepared)
        return prepared

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)  # requests drops only Authorization on a new host
        self._scope(prepared_request)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)

    def _scope(self, prepared: requests.PreparedRequest) -> None:
        here = self.origin is not None and origin(prepared.url or "") == self.origin
        for key, value in self.scoped.items():
            if here:
                prepared.headers.setdefault(key, value)
            elif prepared.headers.get(key) == value:
                del prepared.headers[key]


class SessionStacIO(DefaultStacIO):
    """pystac I/O over a requests session: static catalogs and item files read over http(s)
    are retried, time out and carry scoped headers like API requests. Errors are one line
    without the URL (the caller names the document)."""

    def __init__(self, session: requests.Session) -> None:
        super().__init__()
        self.session = session

    def read_text_from_href(self, href: str) -> str:
        if urlsplit(href).scheme.lower() not in ("http", "https"):
            return super().read_text_from_href(href)
        try:
            response = self.session.get(href)
        except requests.RequestException as exc:
            if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
                raise OSError(f"no answer in time ({type(exc).__name__}; see --timeout)") from None
            raise OSError(f"cannot connect ({type(exc).__name__})") from None
        if not response.ok:
            raise OSError(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
        return response.content.decode("utf-8")


def origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an http(s) URL, the default port filled in; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def parse_headers(values: tuple[str, ...] | list[str] | Mapping[str, str],
                  env: Mapping[str, str] = os.environ, *, variable: str = HEADERS_ENV,
                  flag: str = "--header") -> dict[str, str]:
    """``KEY=VALUE`` strings (flags) plus the environment ``variable`` (one ``KEY=VALUE`` per line):
    ``STACEMBED_HEADERS`` for ``--header``, ``STACEMBED_ASSET_HEADERS`` for ``--asset-header``."""
    if isinstance(values, Mapping):
        pairs = [f"{k}={v}" for k, v in values.items()]
    else:
        pairs = list(values)
    from_env = [line for line in env.get(variable, "").splitlines() if line.strip()]
    headers: dict[str, str] = {}
    for pair in from_env + pairs:
        # KEY=VALUE, or curl's "KEY: VALUE": whichever separator comes first.
        cut = min((i for i in (pair.find("="), pair.find(":")) if i > 0), default=-1)
        if cut < 0:
            # Never echo the text: it is likely a credential.
            raise ConfigError(f"{flag} needs KEY=VALUE (or 'KEY: VALUE'), e.g. Authorization='Bearer ...'")
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


def redact(url: str, keep_query: bool = False) -> str:
    """An href safe to write to an output (``derived_from``, ``emb:source-data``, items.parquet,
    published STAC): no userinfo, and no query or fragment, whatever their parameters are called.
    With ``keep_query`` (``--keep-href-query``) the query and fragment stay, less the parameters
    known to be credentials. Paths without a scheme are returned as they are."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if not keep_query:
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    query = "&".join(p for p in parts.query.split("&")
                     if p and not _SECRET_PARAMS.match(unquote(p.partition("=")[0])))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (a message, a log line, a URL) as it may be shown: in every URL the scheme, host
    and path stay, userinfo and every query value become ``***``; so do HTTP credentials
    (``Basic ...``, ``Bearer ...``) and header values in use in this process."""
    text = str(text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _PARAM_VALUE.sub(lambda m: f"{m['key']}={MASK}", text)
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']} {MASK}", text)


def redact_headers(text: str, headers: Mapping[str, str]) -> str:
    """Remove header values (tokens) from a message that may echo them, e.g. a server error."""
    for value in headers.values():
        if len(value) >= 4:
            text = text.replace(value, "REDACTED")
    return text


def credential_values(gdal: Mapping[str, str], env: Mapping[str, str] = os.environ) -> list[str]:
    """The values of the credentials that GDAL and s3fs read (``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``GS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_SAS_TOKEN``, ``GDAL_HTTP_USERPWD``...),
    given as ``--gdal`` options or in the environment: for ``remember_secrets``."""
    return [str(value) for options in (gdal, env) for key, value in options.items()
            if _CREDENTIAL_OPTION.match(key) and value]


def remember_secrets(*values: Iterable[str]) -> None:
    """Mask these header values in every message from now on (``redact_text``)."""
    global _secrets
    new = {str(v) for group in values for v in group if len(str(v)) >= 6}
    if not new <= set(_secrets):
        with _LOCK:
            _secrets = tuple(sorted(new | set(_secrets), key=len, reverse=True))


def install_log_redaction() -> None:
    """Mask URLs and known header values (``redact_text``) in every log record of stacembed and of
    the libraries that talk to the network for it, GDAL's messages included (rasterio logs them
    from ``rasterio._env`` and ``rasterio._err``), whatever handler the records go to. Process-wide,
    and only once however often it is called.

    It is a log record factory, not a filter: a filter on ``rasterio`` would not see the records
    of its child loggers, which are created as the library's modules load.
    """
    with _LOCK:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "stacembed_redaction", False):
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.name.partition(".")[0] in _REDACTED_LOGGERS:
                _redact_record(record)
            return record

        factory.stacembed_redaction = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it as it would have
        return
    masked = redact_text(message)
    if masked != message:
        record.msg, record.args = masked, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))


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
