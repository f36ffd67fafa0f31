"""Pytest plugin: real STAC API servers on loopback, so API code is tested against real servers.

Two servers, because they differ in what they can answer:

- ``rustac_api``: rustac's in-memory server. Cheap (one process, no database), so each call
  starts a fresh server and tests stay isolated. It supports collections/bbox/datetime/ids
  searches over POST (pystac-client's default), but answers ``filter``/``query`` with zero
  items, ignores ``sortby`` and ``fields``, has no transactions (405), and its GET /search
  answers 500 "unsupported value" as soon as ``collections``, ``bbox`` or ``sortby`` is given.
- ``pgstac_api``: stac-fastapi-pgstac on PostgreSQL + PostGIS, started once per session. It
  answers CQL2 ``filter``, ``query`` and ``sortby`` and has the Transactions extension.

Software missing from the machine skips the tests, unless ``STACEMBED_REQUIRE_SERVERS=1``
(set by CI), where it fails: CI must never turn server tests into silent skips. A server that
is installed but does not come up always fails, with the tail of its log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:  # the server packages are optional: a missing one skips, it must not break collection
    from pypgstac.db import PgstacDB

REQUIRE_SERVERS_ENV = "STACEMBED_REQUIRE_SERVERS"
STARTUP_TIMEOUT_S = 30.0
HOST = "127.0.0.1"

StacDict = dict[str, Any]
StartRustac = Callable[[Sequence[StacDict], Sequence[StacDict]], str]

# Links that describe where a document sat in its static catalog. Both servers add their own;
# rustac keeps the source's as well, ahead of its own, so a stale relative `self` would win.
HIERARCHY_RELS = frozenset({"self", "root", "parent", "collection", "child", "item"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rustac: uses a rustac in-memory STAC API server (rustac_api)")
    config.addinivalue_line("markers", "pgstac: uses a stac-fastapi-pgstac server on PostgreSQL (pgstac_api)")


def unavailable(reason: str) -> NoReturn:
    """Skip for missing software locally; fail when CI requires the servers."""
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVERS_ENV}=1, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_modules(*names: str) -> None:
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"Python package(s) not installed: {', '.join(missing)} (pip install -e '.[test]')")


def rustac_cli() -> str:
    """The `rustac` script of this interpreter's environment, found even when the venv is not on PATH.

    (`python -c "rustac.main()"` does not work: the CLI parses the process's own argv.)
    """
    require_modules("rustac")
    cli = shutil.which("rustac", path=str(Path(sys.executable).parent)) or shutil.which("rustac")
    if cli is None:
        unavailable("the rustac package is installed but its `rustac` command is not found")
    return cli


def free_port() -> int:
    """A port nothing listens on now; the short race until the server binds it is acceptable in tests."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Server:
    """A server subprocess, its base URL and the file that collects its output."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(cmd: Sequence[str], *, cwd: Path, log: Path, url: str, env: dict[str, str] | None = None) -> Server:
    """Start `cmd` and return once its landing page `url`/ answers 200; fail with the log tail otherwise.

    Readiness is judged over HTTP rather than from the log: rustac block-buffers its output
    when it is not a terminal, so its "Serving" line may never reach the log.
    """
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, url, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not answers(f"{url}/"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"{shlex.join(cmd)} did not serve {url} (exit code {process.returncode}):\n{log_tail(log)}",
                        pytrace=False)
        time.sleep(0.1)
    return server


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def api_document(document: StacDict) -> StacDict:
    """A copy of an item or collection without its static-catalog hierarchy links."""
    links = [link for link in document.get("links", []) if link.get("rel") not in HIERARCHY_RELS]
    return {**document, "links": links}


# --- rustac -----------------------------------------------------------------------------------


def write_rustac_inputs(folder: Path, collections: Sequence[StacDict], items: Sequence[StacDict]) -> list[Path]:
    """One JSON file per collection plus one FeatureCollection of items: what `rustac serve` reads.

    rustac generates a collection for items whose collection is not among `collections`.
    """
    paths = []
    for index, collection in enumerate(collections):
        path = folder / f"collection-{index}.json"
        path.write_text(json.dumps(api_document(collection)))
        paths.append(path)
    if items:
        path = folder / "items.json"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [api_document(i) for i in items]}))
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def rustac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartRustac]:
    """Factory: `start(collections, items) -> base URL` of a new rustac in-memory STAC API.

    Every call starts its own server on a free port (isolation costs well under a second);
    all are stopped at the end of the session.
    """
    cli = rustac_cli()
    servers: list[Server] = []

    def start(collections: Sequence[StacDict], items: Sequence[StacDict]) -> str:
        folder = tmp_path_factory.mktemp("rustac")
        inputs = write_rustac_inputs(folder, collections, items)
        url = f"http://{HOST}:{free_port()}"
        cmd = [cli, "serve", "--addr", url.removeprefix("http://"), *map(str, inputs)]
        servers.append(start_server(cmd, cwd=folder, log=folder / "rustac.log", url=url))
        return url

    yield start
    for server in servers:
        server.stop()


# --- pgstac -----------------------------------------------------------------------------------


@contextlib.contextmanager
def pgstac_db(dsn: str) -> Iterator[PgstacDB]:
    """A PgstacDB on a pool that is closed afterwards: PgstacDB's own exit leaves its pool open."""
    from psycopg_pool import ConnectionPool
    from pypgstac.db import PgstacDB

    with ConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool, PgstacDB(pool=pool) as db:
        yield db


@dataclass
class PgstacApi:
    """A running stac-fastapi-pgstac (transactions enabled) and a direct line to its database."""

    url: str
    dsn: str

    def load(self, collections: Sequence[StacDict], items: Sequence[StacDict]) -> None:
        """Upsert collections, then items, the way `pypgstac load --method upsert` does.

        Through pypgstac rather than the Transactions endpoints: one round trip per batch, and
        reloading the same data is not an error (the API answers 409 to duplicates).
        """
        from pypgstac.load import Loader, Methods

        with pgstac_db(self.dsn) as db:
            loader = Loader(db)
            loader.load_collections(iter([api_document(c) for c in collections]), Methods.upsert)
            loader.load_items(iter([api_document(i) for i in items]), Methods.upsert)

    def delete_collection(self, collection_id: str) -> None:
        """Delete a collection and its items, so tests sharing the session database can clean up."""
        with pgstac_db(self.dsn) as db:
            db.query_one("SELECT delete_collection(%s)", (collection_id,))


@dataclass(frozen=True)
class Postgres:
    """Where a PostgreSQL installation's programs are, and who must run them."""

    bindir: Path

    @staticmethod
    def find() -> Postgres:
        """The newest Debian-layout PostgreSQL that has PostGIS; missing software is `unavailable`."""
        initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        if not initdbs:
            unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                        "apt-get install postgresql postgresql-15-postgis-3)")
        bindir = initdbs[-1].parent
        version = bindir.parent.name
        if not Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
            unavailable(f"PostGIS is not installed for PostgreSQL {version} "
                        f"(apt-get install postgresql-{version}-postgis-3)")
        return Postgres(bindir)

    def run(self, program: str, *args: str, log: Path | None = None) -> None:
        """Run a server program as `postgres` when we are root: initdb and postgres refuse root.

        On failure, the tail of `log` (the server's own log, for pg_ctl) joins the program's output.
        """
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, str(self.bindir / program), *args], capture_output=True, text=True)
        if result.returncode != 0:
            server_log = f"\n{log.name}:\n{log_tail(log)}" if log else ""
            pytest.fail(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stdout[-3000:]}{result.stderr[-3000:]}{server_log}", pytrace=False)


def start_postgres(pg: Postgres, root: Path, port: int, stack: contextlib.ExitStack) -> None:
    """A throwaway cluster: trust auth on 127.0.0.1 only, durability off (tests need no crash safety)."""
    data, log = root / "data", root / "postgres.log"
    pg.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync")
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '{HOST}'\nunix_socket_directories = '{root}'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
    pg.run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", str(int(STARTUP_TIMEOUT_S)), "start", log=log)
    stack.callback(pg.run, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")


def create_pgstac_database(port: int) -> str:
    """Create database `stac` with pgstac's schema; returns its DSN.

    The extensions need a superuser, and `pypgstac migrate` must run as one too
    (as another user it fails with "permission denied to set role pgstac_ingest").
    """
    import psycopg
    from pypgstac.migrate import Migrate

    with psycopg.connect(f"postgresql://postgres@{HOST}:{port}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE stac")
    dsn = f"postgresql://postgres@{HOST}:{port}/stac"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for extension in ("postgis", "btree_gist", "unaccent"):
            conn.execute(f"CREATE EXTENSION {extension}")
    with pgstac_db(dsn) as db:
        Migrate(db).run_migration()
    return dsn


def start_stac_fastapi(root: Path, pg_port: int) -> Server:
    """stac-fastapi-pgstac under uvicorn, from an empty directory: its settings also read ./.env."""
    cwd = root / "api"
    cwd.mkdir()
    port = free_port()
    env = {**os.environ, "PGHOST": HOST, "PGPORT": str(pg_port), "PGUSER": "postgres", "PGDATABASE": "stac",
           "PGPASSWORD": "unused-with-trust-auth", "ENABLE_TRANSACTIONS_EXTENSIONS": "true"}
    cmd = [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
           "--host", HOST, "--port", str(port)]
    return start_server(cmd, cwd=cwd, log=root / "uvicorn.log", url=f"http://{HOST}:{port}", env=env)


@pytest.fixture(scope="session")
def pgstac_api() -> Iterator[PgstacApi]:
    """One PostgreSQL + pgstac + stac-fastapi-pgstac for the session, torn down at its end.

    The database is shared by every test that uses it: give each test its own collection ids
    and delete them when done (`delete_collection`).
    """
    require_modules("psycopg", "psycopg_pool", "pypgstac", "stac_fastapi.pgstac", "uvicorn")
    pg = Postgres.find()
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="stacembed-pgstac-"))  # not under pytest's root-only 0700 tmp
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        pg_port = free_port()
        start_postgres(pg, root, pg_port, stack)
        dsn = create_pgstac_database(pg_port)
        api = start_stac_fastapi(root, pg_port)
        stack.callback(api.stop)
        yield PgstacApi(url=api.url, dsn=dsn)
