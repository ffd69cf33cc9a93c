"""moto in server mode, answering one request at a time.

moto's backends are not thread-safe: under its threaded server a DynamoDB transaction
deep-copies a table while another request writes to it, and fails with a 500. The local
system has several clients at once (pollers, the API, partners), so requests are
serialised; moto builds each response whole, so holding the lock for the call suffices.
Cross-origin requests get the CORS headers of the bucket's rules only, as on S3.
"""

from __future__ import annotations

import threading

from moto.moto_server import werkzeug_app
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class SerialMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:
        # moto's server answers every request with permissive CORS headers of its own
        # (MOTO_DISABLE_GLOBAL_CORS, read when moto is imported): off, so the buckets'
        # CORS rules decide, as on S3.
        werkzeug_app.DISABLE_GLOBAL_CORS = True
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial_app(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(self._ip_address, self._port, serial_app, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()
