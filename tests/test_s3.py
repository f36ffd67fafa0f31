"""``s3://`` inputs against a real S3 server on loopback (moto's S3 REST API in its own process,
``tests/s3_server.py``): COGs read by GDAL (``/vsis3/``) and Zarr stores (v2 and v3, consolidated
or not) read by s3fs, configured as the README tells a user to: ``AWS_S3_ENDPOINT``,
``AWS_HTTPS=NO`` and ``AWS_VIRTUAL_HOSTING=FALSE`` for a server that is not AWS, credentials in
the AWS environment or as ``--gdal`` options, ``--aws-unsigned``, ``--requester-pays``.

What is checked: the embeddings equal those of the same files read locally; the server saw what
each flag means (no signature, the requester-pays header, the key given); a missing object or
bucket is one line and a non-zero exit; credentials never reach a log, an output or an error.

The items are the EOPF-like Sentinel-2 store and its GeoTIFF twin of tests/test_zarr.py. Skipped
without moto, s3fs or zarr (``pip install -e '.[test,zarr]'``), unless STACEMBED_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from range_http import PROXY_VARIABLES, loopback_environment
from servers import HOST, Server, free_port, require_modules, start_server

KEY_ID = "AKIASTACEMBEDTEST01"
SECRET = "stacembed-s3-secret/Zq8+kW2vT9xL4mN7pR1sU5yB3cE6hJ0a"
TOKEN = "stacembed-session-token-FwoGZXIvYXdzEJr//////////wEaDEXAMPLE"
OTHER_KEY_ID = "AKIASTACEMBEDOTHER02"
OTHER_SECRET = "stacembed-other-secret-7Hq2mV9xK4pL1sR8tU3wY6zB0cE5fG"
PRIVATE, PUBLIC = "stacembed-private", "stacembed-public"
RES20 = ("--resolution", "20", "--resampling", "average")
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_NO_SIGN_REQUEST", "AWS_REQUEST_PAYER", "AWS_S3_ENDPOINT", "AWS_HTTPS",
                 "AWS_VIRTUAL_HOSTING", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def zarr_helpers():
    """tests/test_zarr.py's stores and items (imported here: it skips its module without zarr)."""
    import test_zarr

    return test_zarr


@dataclass
class S3:
    """The running server: ``endpoint`` as ``AWS_S3_ENDPOINT`` takes it (host:port), the tests'
    own client for uploads, and the server's request log."""

    server: Server
    endpoint: str
    client: Any
    log: Path

    def put_tree(self, folder: Path, bucket: str, prefix: str) -> str:
        """Upload every file under ``folder`` to ``s3://bucket/prefix/...``; returns that URL."""
        extra = {"ACL": "public-read"} if bucket == PUBLIC else {}
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                                       Body=path.read_bytes(), **extra)
        return f"s3://{bucket}/{prefix}"

    def requests(self, bucket: str, prefix: str) -> list[dict[str, str]]:
        """The reads (GET, HEAD; not the tests' uploads) the server answered for ``s3://bucket/prefix/...``."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [entry for entry in map(json.loads, lines)
                if entry["path"].startswith(f"/{bucket}/{prefix}/") and entry["method"] in ("GET", "HEAD")]


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3:
    require_modules("moto", "werkzeug", "s3fs", "boto3", "zarr")
    import boto3

    root = tmp_path_factory.mktemp("s3-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES and not k.startswith("AWS_")}
    cmd = [sys.executable, str(Path(__file__).with_name("s3_server.py")), HOST, str(port), str(root / "requests.jsonl")]
    server = start_server(cmd, cwd=root, log=root / "server.log", url=f"http://{HOST}:{port}", env=env)
    client = boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", region_name="us-east-1",
                          aws_access_key_id="uploader", aws_secret_access_key="uploader-secret")
    client.create_bucket(Bucket=PRIVATE)
    client.create_bucket(Bucket=PUBLIC, ACL="public-read")
    yield S3(server, f"{HOST}:{port}", client, root / "requests.jsonl")
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path, s3):
    """The environment a user sets for an S3-compatible server, with our credentials; nothing
    from this machine's own AWS configuration (profiles, ~/.aws) or proxies."""
    loopback_environment(monkeypatch, *AWS_VARIABLES)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in {"AWS_S3_ENDPOINT": s3.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": KEY_ID,
                        "AWS_SECRET_ACCESS_KEY": SECRET}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@dataclass
class Local:
    """The test data on disk: by kind (``KINDS``), the folder of the GeoTIFFs or of the Zarr store
    (``v2``/``v3``, consolidated or not: each array found by its path, each level by listing), and
    its item; ``cog_item`` is the local reference."""

    cog_item: Path
    stores: dict[str, Path]
    items: dict[str, Path]


KINDS = ("cog", "zarr-v2-consolidated", "zarr-v2", "zarr-v3-consolidated", "zarr-v3")


@pytest.fixture(scope="module")
def local(tmp_path_factory, s3) -> Local:
    tz = zarr_helpers()
    root = tmp_path_factory.mktemp("s3-data")
    pixels = tz.eopf_pixels()
    items = {"cog": tz.geotiff_item(root / "cog", pixels)}
    stores = {"cog": root / "cog"}
    for version in (2, 3):
        for consolidated in (True, False):
            kind = f"zarr-v{version}" + ("-consolidated" if consolidated else "")
            store = tz.write_eopf_zarr(root / kind / "S2.zarr", pixels, version)
            if not consolidated:
                if version == 2:
                    (store / ".zmetadata").unlink()
                else:
                    meta = json.loads((store / "zarr.json").read_text())
                    meta.pop("consolidated_metadata", None)
                    (store / "zarr.json").write_text(json.dumps(meta))
            stores[kind] = store.parent
            items[kind] = tz.eopf_item(store, stated=version == 2)
    return Local(items["cog"], stores, items)


def on_s3(s3: S3, local: Local, kind: str, bucket: str = PRIVATE, *, href: tuple[str, str] | None = None) -> Path:
    """``kind``'s files uploaded under a new prefix of ``bucket`` (GDAL caches what it has read of a
    path for the life of the process), and its item with ``s3://`` hrefs; ``href`` replaces one
    text in them (a missing object or bucket)."""
    folder = local.stores[kind]
    url = s3.put_tree(folder, bucket, f"{kind}-{uuid.uuid4().hex[:8]}")
    doc = json.loads(local.items[kind].read_text())
    for asset in doc["assets"].values():
        asset["href"] = asset["href"].replace(str(folder), url) if kind != "cog" else \
            f"{url}/{asset['href'].removeprefix('./')}"
        if href:
            asset["href"] = asset["href"].replace(*href)
    path = folder.parent / f"{url.rsplit('/', 1)[-1]}.json"
    path.write_text(json.dumps(doc))
    return path


def native_20m(kind: str) -> tuple[str, ...]:
    """The item's 20 m bands as they are (no resampling: ``DirectReader`` or the store's own grid)."""
    tz = zarr_helpers()
    return tz.NATIVE_20M_COG if kind == "cog" else tz.NATIVE_20M_ZARR


@pytest.fixture(scope="module")
def expected(local, tmp_path_factory):
    """The embeddings of the local GeoTIFF item: resampled to 20 m, and its native 20 m bands."""
    from click.testing import CliRunner

    from stacembed.cli import main

    tz = zarr_helpers()
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    root = tmp_path_factory.mktemp("s3-expected")
    return {"res20": tz.run(cli, local.cog_item, root / "res20", *RES20),
            "native": tz.run(cli, local.cog_item, root / "native", *tz.NATIVE_20M_COG)}


def prefix_of(item: Path) -> str:
    return item.stem


@pytest.mark.parametrize("kind", KINDS)
def test_items_on_s3_embed_like_the_same_files_read_locally(cli, tmp_path, s3, aws_env, local, expected, kind):
    # GeoTIFFs through GDAL's /vsis3/ (resampled by stackstac), stores through s3fs (the r20m
    # level of the multiscale store, and b08 averaged from r10m); credentials from the environment.
    tz = zarr_helpers()
    item = on_s3(s3, local, kind)
    tz.assert_same_embeddings(tz.run(cli, item, tmp_path / "out", *RES20), expected["res20"])
    seen = s3.requests(PRIVATE, prefix_of(item))
    assert seen and all(entry["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
                        for entry in seen)


@pytest.mark.parametrize("mode", ["aws-unsigned", "requester-pays", "gdal-options"])
@pytest.mark.parametrize("kind", ["cog", "zarr-v3"])
def test_unsigned_requester_pays_and_an_endpoint_given_as_gdal_options(cli, tmp_path, s3, aws_env, local, expected,
                                                                      kind, mode):
    tz = zarr_helpers()
    args: tuple[str, ...] = native_20m(kind)
    if mode == "aws-unsigned":  # a public bucket, and no credentials anywhere
        item = on_s3(s3, local, kind, PUBLIC)
        aws_env.delenv("AWS_ACCESS_KEY_ID")
        aws_env.delenv("AWS_SECRET_ACCESS_KEY")
        args += ("--aws-unsigned",)
    elif mode == "requester-pays":
        item = on_s3(s3, local, kind)
        args += ("--requester-pays",)
    else:  # the server as --gdal options, for GDAL and s3fs alike; another key in the environment
        item = on_s3(s3, local, kind)
        for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_REGION"):
            aws_env.delenv(name)
        aws_env.setenv("AWS_ACCESS_KEY_ID", OTHER_KEY_ID)
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", OTHER_SECRET)
        for option in (f"AWS_S3_ENDPOINT={s3.endpoint}", "AWS_HTTPS=NO", "AWS_VIRTUAL_HOSTING=FALSE",
                       "AWS_REGION=us-east-1"):
            args += ("--gdal", option)
        # fsspec keeps a filesystem per set of options for the life of the process, with the credentials
        # botocore found when it was made; other options (a timeout) make another, as a new process would.
        args += ("--timeout", "29")
    tz.assert_same_embeddings(tz.run(cli, item, tmp_path / "out", *args), expected["native"])
    seen = s3.requests(PUBLIC if mode == "aws-unsigned" else PRIVATE, prefix_of(item))
    assert seen
    if mode == "aws-unsigned":
        assert all(entry["authorization"] == "" for entry in seen), seen[:3]
    elif mode == "requester-pays":
        assert all(entry["request_payer"] == "requester" and KEY_ID in entry["authorization"] for entry in seen)
    else:
        assert all(f"Credential={OTHER_KEY_ID}/" in entry["authorization"] for entry in seen), seen[:3]


ERRORS = {
    "missing-object": ({"cog": ("/B02_20m.tif", "/B02_21m.tif"), "zarr-v3": ("/r20m", "/r21m")}, PRIVATE, ()),
    "missing-bucket": ({"cog": (f"s3://{PRIVATE}/", "s3://stacembed-nowhere/"),
                        "zarr-v3": (f"s3://{PRIVATE}/", "s3://stacembed-nowhere/")}, PRIVATE, ()),
    "unsigned-on-a-private-bucket": ({}, PRIVATE, ("--aws-unsigned",)),
}


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("kind", ["cog", "zarr-v3"])
def test_a_missing_object_or_bucket_is_one_line_and_a_failure(cli, tmp_path, s3, aws_env, local, kind, error):
    replacements, bucket, flags = ERRORS[error]
    item = on_s3(s3, local, kind, bucket, href=replacements.get(kind))
    result = cli("run", "--items", item, "--out", tmp_path / "out", "--chip-size", "16", "-q", "--retries", "0",
                 *native_20m(kind), *flags)
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("stacembed: error: "), message
    assert "s3://" in message and ("21m" in message or "nowhere" in message
                                   or error == "unsigned-on-a-private-bucket"), message
    assert SECRET not in message and KEY_ID not in message
    if error == "unsigned-on-a-private-bucket" and kind == "cog":  # GDAL says only "HTTP response code: 403"
        assert "access denied" in message and "--aws-unsigned" in message, message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


def test_credentials_never_reach_logs_outputs_or_errors(cli, tmp_path, s3, aws_env, local, caplog, capfd):
    from stacembed.access import redact_text

    aws_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    # stacembed's, GDAL's (CPL_DEBUG, through rasterio) and the S3 clients' loggers, all at DEBUG. (Not
    # the root logger: stac-geoparquet's own debug call cannot be formatted, logging.debug(schema, batch).)
    for name in ("stacembed", "rasterio", "botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "zarr"):
        caplog.set_level(logging.DEBUG, logger=name)
    outputs, texts = tmp_path / "out", []
    for kind in ("cog", "zarr-v2"):
        item = on_s3(s3, local, kind)
        result = cli("run", "--items", item, "--out", outputs / kind, "--chip-size", "16", "-vv",
                     "--gdal", "CPL_DEBUG=ON", "--timeout", "28", *native_20m(kind))  # a new filesystem: the token
        assert result.exit_code == 0, result.output
        texts.append(result.output)
        seen = s3.requests(PRIVATE, prefix_of(item))
        assert seen and all(entry["security_token"] == TOKEN for entry in seen)  # in use, so it could leak
        missing = on_s3(s3, local, kind, href=("20m", "21m") if kind == "cog" else ("/r20m", "/r21m"))
        failed = cli("run", "--items", missing, "--out", outputs / f"{kind}-failed", "--chip-size", "16",
                     "--timeout", "28", *native_20m(kind))
        assert failed.exit_code != 0
        texts.append(failed.output)
    captured = capfd.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    # botocore's debug records of s3fs's requests hold every header sent: there, the token is masked.
    sent = [message for message in (record.getMessage() for record in caplog.records)
            if message.startswith("Sending http request") and f"/{PRIVATE}/zarr-v2-" in message
            and "method=PUT" not in message]  # the run's reads, not the test's uploads
    assert sent and all("security-token': b'***'" in message.lower() for message in sent), sent[:1]
    for secret in (SECRET, TOKEN):
        assert all(secret not in text for text in texts)
        for path in outputs.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    # The one choke point every message goes through masks them wherever they appear.
    assert redact_text(f"x-amz-security-token: {TOKEN}; secret {SECRET}") == "x-amz-security-token: ***; secret ***"


def test_storage_options_follow_gdal_s_s3_settings(monkeypatch):
    import rasterio

    from stacembed.readers.zarr import storage_options

    for name in (*AWS_VARIABLES, "GDAL_HTTP_TIMEOUT", "GDAL_HTTP_MAX_RETRY"):
        monkeypatch.delenv(name, raising=False)
    with rasterio.Env(AWS_S3_ENDPOINT="minio.example:9000", AWS_HTTPS="NO", AWS_VIRTUAL_HOSTING="FALSE",
                      AWS_REGION="eu-central-1", AWS_REQUEST_PAYER="requester", GDAL_HTTP_TIMEOUT="7",
                      GDAL_HTTP_MAX_RETRY="2"):
        options = storage_options("s3://bucket/product.zarr")
    assert options == {
        "requester_pays": True,
        "config_kwargs": {"connect_timeout": 7.0, "read_timeout": 7.0, "retries": {"max_attempts": 3},
                          "s3": {"addressing_style": "path"}},
        "client_kwargs": {"endpoint_url": "http://minio.example:9000", "region_name": "eu-central-1"},
    }
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    monkeypatch.setenv("AWS_S3_ENDPOINT", "https://s3.example.com")
    assert storage_options("s3://bucket/product.zarr") == {
        "anon": True, "client_kwargs": {"endpoint_url": "https://s3.example.com"}}


def test_credentials_as_gdal_options_are_one_line_that_does_not_repeat_them(cli, tmp_path):
    # rasterio.Env refuses them (EnvError: a traceback before); the environment is where they go.
    result = cli("run", "--items", tmp_path / "items.json", "--out", tmp_path / "out",
                 "--gdal", f"AWS_SECRET_ACCESS_KEY={SECRET}")
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "stacembed: error: --gdal AWS_SECRET_ACCESS_KEY: S3 credentials are read from the environment "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or an AWS profile (AWS_PROFILE), "
        "not from GDAL options"]
