"""A FHIR (and JWKS) HTTP endpoint on loopback for the CDS Hooks tests: it serves fixed JSON
resources by path and query, checks the bearer token, and records what it was asked.

A real HTTP server (`http.server` in a thread) on a real socket, so the service's httpx
client, timeouts and headers are exercised as against an EHR's FHIR server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonEndpoint:
    """`routes`: "Patient/1" or "Condition?patient=1" (path relative to `base`) -> JSON."""

    def __init__(self, routes: dict[str, object], token: str | None = None,
                 prefix: str = "/fhir", delay_s: float = 0.0):
        self.routes = dict(routes)
        self.token = token
        self.prefix = prefix
        self.delay_s = delay_s
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                endpoint.requests.append({"path": self.path,
                                          "authorization": self.headers.get("Authorization")})
                if endpoint.delay_s:
                    time.sleep(endpoint.delay_s)
                if endpoint.token is not None and \
                        self.headers.get("Authorization") != f"Bearer {endpoint.token}":
                    return self._send(401, {"resourceType": "OperationOutcome"})
                key = self.path[len(endpoint.prefix) + 1:] \
                    if self.path.startswith(endpoint.prefix + "/") else None
                if key not in endpoint.routes:
                    return self._send(404, {"resourceType": "OperationOutcome"})
                return self._send(200, endpoint.routes[key])

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def __enter__(self) -> JsonEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def searchset(*resources) -> dict:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r} for r in resources]}
