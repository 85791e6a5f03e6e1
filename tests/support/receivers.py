"""Receivers that are not Haidang's code, on loopback, for the delivery tests.

- :class:`MLLPListener`: the ``hl7`` package's own asyncio MLLP server (``hl7.mllp``),
  answering each message with the ACK code it is told (AA, AE, AR) or not at all.
- :class:`FhirAndHookServer`: a small FHIR R4 endpoint (http.server) that implements
  conditional update (``PUT DiagnosticReport?identifier=system|value``: create, or replace
  the one match), validates every report with ``fhir.resources``, and records webhook POSTs.

Both can be stopped and started again on the same port: "receiver down, then up".
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from urllib.parse import parse_qs, urlsplit

import hl7
from hl7.mllp import start_hl7_server


class MLLPListener:
    """``answer``: "AA", "AE", "AR", or None for a listener that reads and never answers."""

    def __init__(self, port: int, answer: str | None = "AA"):
        self.port = port
        self.answer = answer
        self.received: list[hl7.Message] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, reader, writer) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                if self.answer is None:
                    continue
                writer.writemessage(message.create_ack(self.answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> MLLPListener:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            server = self._loop.run_until_complete(start_hl7_server(
                self._handle, "127.0.0.1", self.port, encoding="utf-8"))
            ready.set()
            self._loop.run_forever()
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "MLLP listener did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def control_ids(self, kind: str | None = None) -> list[str]:
        return [str(m.extract_field("MSH", 1, 10)) for m in self.received
                if kind is None or str(m.segment("MSH")[9]).startswith(kind)]


class FhirAndHookServer:
    """A FHIR conditional-update endpoint at ``/fhir`` and a webhook sink at ``/hook``."""

    def __init__(self, port: int, status: int = 0):
        self.port = port
        self.status = status  # answer every request with this status instead (0: normal)
        self.reports: dict[str, dict] = {}  # identifier "system|value" -> current resource
        self.puts: list[str] = []
        self.hooks: list[dict] = []
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> FhirAndHookServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):  # noqa: N802
                from fhir.resources.R4B.diagnosticreport import DiagnosticReport

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.status:
                    return self._reply(outer.status)
                url = urlsplit(self.path)
                [identifier] = parse_qs(url.query)["identifier"]
                if url.path != "/fhir/DiagnosticReport":
                    return self._reply(404)
                DiagnosticReport.parse_obj(body)  # an invalid report fails the test's server
                system, _, value = identifier.partition("|")
                if not any(i.get("system") == system and i.get("value") == value
                           for i in body.get("identifier", [])):
                    return self._reply(400)  # FHIR: the resource must carry the identifier
                outer.puts.append(identifier)
                created = identifier not in outer.reports
                outer.reports[identifier] = body
                return self._reply(201 if created else 200, body)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.status:
                    return self._reply(outer.status)
                outer.hooks.append(body)
                return self._reply(200)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
