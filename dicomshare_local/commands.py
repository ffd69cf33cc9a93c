"""``dicomshare local up`` and ``dicomshare local demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser("local", help="run the whole system on this machine (no AWS, no Docker)",
                                  description="Run dicomshare locally: moto server, real handlers, real HTTP.")
    actions = local.add_subparsers(dest="local_command", required=True, metavar="{up,demo}")
    for name, help_text, run in (
        ("up", "start the local system and wait for Ctrl-C", up),
        ("demo", "start the local system, load demo studies, create a share and print its link", demo),
    ):
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--state-dir", type=Path, default=Path(".dicomshare"),
                            help="where local.json and the local de-identification secret live (default: .dicomshare)")
        parser.add_argument("--config", type=Path, default=Path("cdk.json"),
                            help="cdk.json whose 'dicomshare' context configures the system (default: ./cdk.json)")
        parser.add_argument("--aws-port", type=int, default=4566, help="port of the moto server (default: 4566)")
        parser.add_argument("--api-port", type=int, default=8080, help="port of the share API (default: 8080)")
        parser.add_argument("--dicom-port", type=int, default=None,
                            help="also run the first partner's DICOM C-STORE gateway on this port (default: off)")
        parser.set_defaults(func=run)


LOG_FILE = "lambda.log"


def _handler_output_to_log_file(state_dir: Path):
    """Handlers print structured logs and EMF metrics to stdout, as on Lambda, where
    CloudWatch Logs collects them. Locally they go to ``<state-dir>/lambda.log``; the
    terminal keeps the system's own lines. Returns the terminal's stream."""
    state_dir.mkdir(parents=True, exist_ok=True)
    terminal = sys.stdout
    sys.stdout = open(state_dir / LOG_FILE, "a", buffering=1)
    return terminal


def _start(args: argparse.Namespace):
    from dicomshare_local.system import LocalSystem, PortInUse, load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args.terminal = _handler_output_to_log_file(args.state_dir)
    system = LocalSystem(args.state_dir, settings=load_settings(args.config),
                         aws_port=args.aws_port, api_port=args.api_port, dicom_port=args.dicom_port)
    try:
        system.start()
    except PortInUse as error:
        system.stop()
        print(f"dicomshare: {error}", file=sys.stderr)
        raise SystemExit(2)
    return system


def _serve_until_stopped(system) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop every thread and free the ports."""
    from dicomshare.cli import serve_until_stopped

    def stop():
        system.stop()
        print("stopped", file=sys.stderr, flush=True)

    serve_until_stopped(stop)
    return 0


def up(args: argparse.Namespace) -> int:
    system = _start(args)
    _say(args, f"connection file: {args.state_dir / 'local.json'}; handler logs: {args.state_dir / LOG_FILE}")
    if system.dicom_gateway:
        connection = system.connection()
        _say(args, f"DICOM: storescu -aet {connection['partner_ae_title']} -aec {connection['dicom_ae_title']} "
                   f"{system.host} {connection['dicom_port']} FILES")
    _say(args, f"ready {system.api_url}")
    return _serve_until_stopped(system)


def demo(args: argparse.Namespace) -> int:
    from dicomshare_local import demo as demo_data

    system = _start(args)
    _say(args, f"connection file: {args.state_dir / 'local.json'}; handler logs: {args.state_dir / LOG_FILE}")
    _say(args, f"ready {system.api_url}")
    _say(args, "loading demo studies…")
    try:
        link = demo_data.load(system)
    except Exception:
        system.stop()
        raise
    _say(args, f"share link (open in a browser): {link}")
    _say(args, "Ctrl-C to stop.")
    return _serve_until_stopped(system)


def _say(args: argparse.Namespace, line: str) -> None:
    print(line, file=args.terminal, flush=True)
