"""The DICOM side: a Storage SCP and Verification SCP (PS3.4 Annexes A and B) on pynetdicom.

Associations (PS3.8 7.1): the called AE title must be the gateway's, the calling AE title
one of the configured partners' (pynetdicom's ``require_calling_aet``; anything else is
rejected with A-ASSOCIATE-RJ, "calling AE title not recognized", before any data is sent).
Presentation contexts: every storage SOP class pynetdicom knows, in every transfer syntax
the de-identification engine rewrites (:data:`dicomshare.validation.SUPPORTED_TRANSFER_SYNTAXES`),
plus Verification (C-ECHO). The gateway never decodes a data set and never holds one in
memory: pynetdicom writes it as received, with File Meta Information, to a temporary file
(``STORE_RECV_CHUNKED_DATASET``; ``TMPDIR``), which is copied in chunks into the spool.
It answers:

- ``0x0000`` Success, once the instance is durably in the spool (:mod:`dicomshare_gateway.spool`);
- ``0xA700`` Refused: Out of Resources, when the spool is below its free-space minimum or
  the write failed: the sender keeps the instance and retries, nothing is acknowledged
  that is not on disk.

Logs name the partner and status, never a DICOM value (pynetdicom's own loggers, which
print UIDs at INFO and DEBUG, are held at WARNING).
"""

from __future__ import annotations

import logging
import ssl
import threading

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from dicomshare.cli import read_secret_file
from dicomshare.validation import SUPPORTED_TRANSFER_SYNTAXES
from dicomshare_gateway.config import GatewayConfig
from dicomshare_gateway.spool import Spool, SpoolFull, upload_id
from dicomshare_gateway.uploader import Uploader

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700

log = logging.getLogger("dicomshare.gateway")


def tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """Server TLS (1.2 or later); with ``ca_certificates``, callers must present a certificate."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.certificate, config.tls.private_key)
    if config.tls.ca_certificates:
        context.load_verify_locations(config.tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Gateway:
    """The SCP and its uploader: ``start()``, ``port``, ``stop()``."""

    def __init__(self, config: GatewayConfig, uploader_factory=Uploader):
        self.config = config
        self.spool = Spool(config.spool_dir, config.min_free_bytes)
        self.secret = read_secret_file(config.upload_id_secret_file)
        self.uploader = uploader_factory(self.spool, config)
        self.received = 0
        self._lock = threading.Lock()

    def handle_store(self, event) -> int:
        partner = self.config.partner_by_ae_title[event.assoc.requestor.ae_title]
        try:
            self.spool.accept(partner, upload_id(self.secret, str(event.request.AffectedSOPInstanceUID)),
                              event.dataset_path)
        except SpoolFull:
            log.error("C-STORE refused (0xA700): the spool is below its free-space minimum; partner=%s", partner)
            return OUT_OF_RESOURCES
        except OSError as error:
            log.error("C-STORE refused (0xA700): spool write failed (%s); partner=%s", type(error).__name__, partner)
            return OUT_OF_RESOURCES
        with self._lock:
            self.received += 1
        self.uploader.wake.set()
        return SUCCESS

    def handle_echo(self, event) -> int:
        return SUCCESS

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = sorted(self.config.partner_by_ae_title)
        ae.require_called_aet = True
        ae.maximum_associations = self.config.maximum_associations
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout_seconds
        transfer_syntaxes = sorted(SUPPORTED_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, transfer_syntaxes)
        ae.add_supported_context(Verification, transfer_syntaxes)
        return ae

    def start(self) -> None:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.uploader.start()
        self.server = self.application_entity().start_server(
            (self.config.bind_address, self.config.port), block=False, ssl_context=tls_context(self.config),
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo)])

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.uploader.stop()
        self.server.shutdown()
        self.uploader.join(timeout=30)
