"""``dicomshare reconcile``: recount studies from their instance items and repair drift.

Against AWS, with the caller's credentials (any boto3 configuration; ``AWS_ENDPOINT_URL``
is honoured)::

    dicomshare reconcile --table <TableName> 2.25.1234...       # one or more studies
    dicomshare reconcile --table <TableName> --flagged          # what the scheduled function does
    dicomshare reconcile --table <TableName> --all --dry-run    # scan every study, change nothing

Against the local system, ``--state-dir`` (default ``.dicomshare``) names the folder whose
``local.json`` gives the endpoint, credentials and table. One line per study:
``<study>: consistent (n instances)`` or ``<study>: repaired (...)`` with each corrected
value (``would repair`` with ``--dry-run``). Exit status: 0 consistent or repaired,
3 drift found by ``--dry-run``, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_DRIFT = 0, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconcile", help="recount studies from their instance items and repair counts and counted marks",
        description="Recount studies from their instance items and repair study/series counts and counted "
        "marks. Exit status: 0 consistent or repaired, 3 drift found with --dry-run, 2 usage error.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("study_uids", metavar="STUDY_UID", nargs="*", default=[],
                       help="de-identified Study Instance UIDs")
    which.add_argument("--flagged", action="store_true", help="the studies the counts function flagged")
    which.add_argument("--all", action="store_true", help="every study (scans the whole table)")
    parser.add_argument("--table", help="the index table (TableName output of the storage stack); "
                        "default: the local system's, from --state-dir")
    parser.add_argument("--state-dir", type=Path, default=Path(".dicomshare"),
                        help="the local system's folder with local.json, used when --table is not given "
                        "(default: .dicomshare)")
    parser.add_argument("--dry-run", action="store_true", help="report drift, change nothing")
    parser.set_defaults(func=reconcile)


def _client_and_table(args: argparse.Namespace):
    import boto3

    from dicomshare.cli import UsageError

    if args.table:
        return boto3.client("dynamodb"), args.table
    connection_file = args.state_dir / "local.json"
    if not connection_file.exists():
        raise UsageError(f"--table not given and no local system at {connection_file}")
    local = json.loads(connection_file.read_text())
    return boto3.client("dynamodb", endpoint_url=local["aws_endpoint_url"], region_name=local["region"],
                        aws_access_key_id=local["aws_access_key_id"],
                        aws_secret_access_key=local["aws_secret_access_key"]), local["table_name"]


def reconcile(args: argparse.Namespace) -> int:
    from dicomshare_aws import counts, reconcile as reconciliation

    dynamodb, table = _client_and_table(args)
    flags: dict[str, list[dict]] = {}
    if args.flagged:
        flags = reconciliation.flagged_studies(dynamodb, table, older_than_seconds=0)
        study_uids = sorted(flags)
    elif args.all:
        study_uids = reconciliation.all_studies(dynamodb, table)
    else:
        study_uids = args.study_uids
    drift = False
    for study_uid in study_uids:
        result = reconciliation.reconcile_study(dynamodb, table, study_uid, dry_run=args.dry_run)
        drift |= result.repaired
        line = result.describe()
        print(line.replace(": repaired", ": would repair", 1) if args.dry_run else line)
        if not args.dry_run and study_uid in flags:
            counts.unflag(dynamodb, table, flags[study_uid])
    print(f"{len(study_uids)} studies, {'drift found' if drift else 'all consistent'}"
          + (" (dry run: nothing changed)" if args.dry_run else ""))
    return EXIT_DRIFT if args.dry_run and drift else EXIT_OK
