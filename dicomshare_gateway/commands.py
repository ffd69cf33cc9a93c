"""``dicomshare gateway``: run the C-STORE gateway, or print an instance's upload identifier."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/dicomshare-gateway/gateway.json")
CONFIG_ENV = "DICOMSHARE_GATEWAY_CONFIG"
"""The configuration document itself, as JSON (containers: the hosted gateway); wins over --config."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway", help="run the DICOM C-STORE gateway (partner side; see docs/gateway.md)",
        description="Receive DICOM instances (C-STORE, C-ECHO), spool them durably and upload them to the "
        "ingest bucket under the partner's prefix. Stops on SIGTERM or Ctrl-C; the spool survives restarts.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"the gateway's configuration file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--print-upload-id", metavar="SOP_INSTANCE_UID",
                        help="print the upload identifier receipts carry for this SOP Instance UID, and exit")
    parser.set_defaults(func=gateway)


def gateway(args: argparse.Namespace) -> int:
    from dicomshare.cli import UsageError, read_secret_file, serve_until_stopped
    from dicomshare_gateway import config as gateway_config
    from dicomshare_gateway.spool import upload_id

    try:
        config = gateway_config.from_document(json.loads(os.environ[CONFIG_ENV]), Path("/")) \
            if os.environ.get(CONFIG_ENV) else gateway_config.load(args.config)
    except (gateway_config.GatewayConfigError, ValueError) as error:
        raise UsageError(str(error)) from error
    if args.print_upload_id:
        print(upload_id(read_secret_file(config.upload_id_secret_file), args.print_upload_id))
        return 0
    from dicomshare_gateway.scp import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    server = Gateway(config)
    server.start()
    files, size = server.spool.size()
    print(f"listening {config.ae_title}@{config.bind_address}:{server.port}; spool holds {files} files, {size} bytes",
          file=sys.stderr, flush=True)

    def stop():
        server.stop()
        files, size = server.spool.size()
        print(f"stopped; spool holds {files} files, {size} bytes", file=sys.stderr, flush=True)

    serve_until_stopped(stop)
    return 0
