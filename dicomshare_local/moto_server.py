"""moto in server mode, answering one request at a time.

moto's backends are not thread-safe: under its threaded server a DynamoDB transaction
deep-copies a table while another request writes to it, and fails with a 500. The local
system has several clients at once (pollers, the API, partners), so requests are
serialised; moto builds each response whole, so holding the lock for the call suffices.
Cross-origin requests get the CORS headers of the bucket's rules only, as on S3.

moto's ``TransactWriteItems`` keeps a copy of each table it touches, to roll back a
cancelled transaction, but takes that copy once per *item* of the transaction: a
100-item transaction on a table of a 2,000-instance study deep-copied ~5,000 items 100
times (seconds, with every other request waiting on the lock), so the local API stopped
answering while a study was counted. :func:`copy_each_table_once` makes it one copy per
table per transaction. The copies are all taken before the transaction writes anything,
so they are identical: the behaviour is moto's, only cheaper.
"""

from __future__ import annotations

import copy
import threading
from functools import wraps

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models.table import Table
from moto.moto_server import werkzeug_app
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


class _TablesCopiedOnce:
    """The ``copy`` module as moto's DynamoDB backend sees it during one transaction: a
    table is deep-copied once, everything else as usual."""

    def __init__(self) -> None:
        self.tables: dict[int, Table] = {}

    def deepcopy(self, value, memo=None):
        if isinstance(value, Table):
            if id(value) not in self.tables:
                self.tables[id(value)] = copy.deepcopy(value)
            return self.tables[id(value)]
        return copy.deepcopy(value, memo)

    def __getattr__(self, name: str):
        return getattr(copy, name)


def copy_each_table_once() -> None:
    """Patch moto's ``TransactWriteItems`` (once per process; requests are serialised, so
    one transaction runs at a time)."""
    backend = dynamodb_models.DynamoDBBackend
    if getattr(backend.transact_write_items, "copies_each_table_once", False):
        return
    original = backend.transact_write_items

    @wraps(original)
    def transact_write_items(self, transact_items):
        dynamodb_models.copy = _TablesCopiedOnce()
        try:
            return original(self, transact_items)
        finally:
            dynamodb_models.copy = copy

    transact_write_items.copies_each_table_once = True
    backend.transact_write_items = transact_write_items


class SerialMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:
        # moto's server answers every request with permissive CORS headers of its own
        # (MOTO_DISABLE_GLOBAL_CORS, read when moto is imported): off, so the buckets'
        # CORS rules decide, as on S3.
        werkzeug_app.DISABLE_GLOBAL_CORS = True
        copy_each_table_once()
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial_app(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        self._server = make_server(self._ip_address, self._port, serial_app, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()
