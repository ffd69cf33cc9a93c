"""``dicomshare local up`` and ``dicomshare local demo``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
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
        parser.set_defaults(func=run)


def _start(args: argparse.Namespace):
    from dicomshare_local.system import LocalSystem, PortInUse, load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    system = LocalSystem(args.state_dir, settings=load_settings(args.config),
                         aws_port=args.aws_port, api_port=args.api_port)
    try:
        system.start()
    except PortInUse as error:
        system.stop()
        print(f"dicomshare: {error}", file=sys.stderr)
        raise SystemExit(2)
    return system


def _serve_until_stopped(system) -> int:
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        stopped.wait()
    finally:
        system.stop()
        print("stopped", flush=True)
    return 0


def up(args: argparse.Namespace) -> int:
    system = _start(args)
    print(f"connection file: {args.state_dir / 'local.json'}", flush=True)
    print(f"ready {system.api_url}", flush=True)
    return _serve_until_stopped(system)


def demo(args: argparse.Namespace) -> int:
    from dicomshare_local import demo as demo_data

    system = _start(args)
    print(f"ready {system.api_url}", flush=True)
    try:
        link = demo_data.load(system)
    except Exception:
        system.stop()
        raise
    print(f"connection file: {args.state_dir / 'local.json'}", flush=True)
    print(f"share link (open in a browser): {link}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    return _serve_until_stopped(system)
