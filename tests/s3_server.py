"""An S3 server on loopback for tests/test_s3.py: moto's S3 REST API (buckets, objects, ranged GETs,
listings, ACLs), run in its own process, that writes one JSON line per request it answers.

``python s3_server.py HOST PORT LOG``. Each line of ``LOG`` is ``{"method", "path", "authorization",
"request_payer", "security_token"}``: the headers that show how a client signed and what it asked
for, so that tests can check what GDAL and s3fs really sent (unsigned, requester pays).

Its own process, not a thread of the tests': moto's import registers botocore hooks process-wide,
and a server thread would compete with the readers for the interpreter.
"""

from __future__ import annotations

import json
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, run_simple


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # the request log is LOG, not stderr
        pass


def main(host: str, port: int, log_path: str) -> None:
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # open for the life of the process

    def recorded(environ, start_response):
        entry = {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
                 "authorization": environ.get("HTTP_AUTHORIZATION", ""),
                 "request_payer": environ.get("HTTP_X_AMZ_REQUEST_PAYER", ""),
                 "security_token": environ.get("HTTP_X_AMZ_SECURITY_TOKEN", "")}
        with lock:
            log.write(json.dumps(entry) + "\n")
        return app(environ, start_response)

    run_simple(host, port, recorded, threaded=True, request_handler=QuietHandler)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
