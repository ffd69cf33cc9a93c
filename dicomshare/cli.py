"""The ``dicomshare`` command.

``dicomshare deid SRC DST`` de-identifies a file or a folder (recursively) on this machine
with the same engine as the pipeline. Output files are named from the *new* UIDs
(``DST/<study>/<series>/<sop>.dcm``), never from input names, which often carry patient
names. Each refused file gets one line: its path relative to SRC and the reason. That path
is printed deliberately: it is the user's own folder, on the user's own console, and they
need it to find the file; nothing is logged or written elsewhere.

Outputs never collide silently: the first file to claim an output path wins; a later file
with the same output is reported ``duplicate``, one with another output for the same SOP
Instance UID is refused ``conflicting_instance``; the summary counts the files written.

Identities are scoped to ``--partner`` (default :data:`DEFAULT_PARTNER`), as the pipeline
scopes them to the uploading partner. ``--keep-free-text`` and ``--pixel-opt-in`` are the
partner settings of the same names (:class:`dicomshare.settings.Partner`). A file without Patient ID takes the patient of its
study in the run: files with Patient ID go first, then those without, each with the
pseudonym of another file of its (new) study, or one keyed from the study when none has it.

Exit status: 0 all de-identified, 3 some refused, 2 usage error.

Other packages add subcommands through the ``dicomshare.commands`` entry point group
(``pyproject.toml``): ``dicomshare local ...`` (the local system) is registered by
:mod:`dicomshare_local.commands`, ``dicomshare reconcile ...`` (recount studies, repair
drift) by :mod:`dicomshare_aws.reconcile_command`, ``dicomshare gateway`` (the DICOM
C-STORE gateway) by :mod:`dicomshare_gateway.commands`. The domain package never imports
the local runtime, the gateway or boto3.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Sequence

from dicomshare import profile as profiles
from dicomshare.deidentify import DuplicateInstance, deidentify_file
from dicomshare.profile import Profile
from dicomshare.settings import HIGH_RISK_SOP_CLASSES, PARTNER_ID, Settings
from dicomshare.validation import DeidentificationRefused

EXIT_OK, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3
COMMANDS_GROUP = "dicomshare.commands"
"""Entry point group of subcommands other packages add: ``register(subparsers)`` callables."""
DUPLICATE = "duplicate"
DEFAULT_SECRET_FILE = Path(".dicomshare") / "deid-secret"
SECRET_BYTES = 32
DEFAULT_PARTNER = "local"
"""The partner of ``dicomshare deid`` without ``--partner``: files de-identified on this
machine. With the pipeline's secret and a partner's id, the command gives that partner's
UIDs and pseudonyms."""
_LATER = "later"
"""What the first pass reports for a file without Patient ID: done in the second pass."""


class UsageError(Exception):
    pass


@dataclass(frozen=True)
class _Options:
    """What every file of one run is de-identified with (sent to the worker processes)."""

    dst: Path
    profile: str
    keep_free_text: bool
    pixel_opt_in: tuple[str, ...]
    secret: bytes
    partner: str


@cache
def _profile(name: str, keep_free_text: bool) -> Profile:
    """The named profile, built once per process."""
    return Profile(name=name, options=profiles.PROFILES[name], keep_free_text=keep_free_text)


def serve_until_stopped(stop: Callable[[], None]) -> None:
    """Block until Ctrl-C or SIGTERM, then call ``stop`` with both signals ignored, so a
    second one cannot interrupt the shutdown (the long-running subcommands: ``local up``,
    ``local demo``, ``gateway``)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        stop()


def read_secret_file(path: Path) -> bytes:
    """The de-identification secret kept in ``path``; created (0600, 32 random bytes as hex)
    when missing. The key is the file's text, exactly as the pipeline uses the Secrets
    Manager secret string, so the same secret gives the same UIDs here and in the pipeline.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(SECRET_BYTES) + "\n")
    try:
        secret = path.read_text(encoding="ascii").strip()
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path}: unreadable secret file") from exc
    if len(secret) < 32:
        raise UsageError(f"{path}: the secret must be at least 32 characters")
    return secret.encode("ascii")


def _inputs(src: Path, dst: Path) -> list[Path]:
    if src.is_file():
        return [src]
    dst = dst.resolve()
    return sorted(
        p for p in src.rglob("*") if p.is_file() and dst not in p.resolve().parents
    )


class _PatientLater(Exception):
    """A file without Patient ID in the first pass."""


def _patient_later(study_uid: str) -> str | None:
    raise _PatientLater()


def _deidentify_one(task: tuple[Path, _Options, dict[str, str] | None]) -> tuple[str | None, str, str]:
    """De-identify one file: :data:`DUPLICATE`, the refusal reason (``None`` when written,
    :data:`_LATER` in the first pass for a file without Patient ID), the new Study Instance
    UID and the pseudonym.

    ``study_patients`` (second pass) holds the pseudonym of each new study seen in the first.
    Nothing stops a folder run: an error this engine did not foresee is reported for its
    file as ``internal_error`` (no value from the file in it) and the run goes on.
    """
    path, options, study_patients = task
    try:
        plan = deidentify_file(
            path, options.dst, profile=_profile(options.profile, options.keep_free_text), secret=options.secret,
            partner=options.partner, settings=Settings(pixel_opt_in=options.pixel_opt_in),
            study_patient=_patient_later if study_patients is None else study_patients.get,
        )
    except DuplicateInstance as duplicate:
        return DUPLICATE, duplicate.plan.study_instance_uid, duplicate.plan.patient_pseudonym
    except DeidentificationRefused as refused:
        return refused.reason, "", ""
    except _PatientLater:
        return _LATER, "", ""
    except OSError:
        return "unreadable", "", ""
    except Exception:
        return "internal_error", "", ""
    return None, plan.study_instance_uid, plan.patient_pseudonym


def _run(tasks: list, jobs: int) -> list[tuple[str | None, str, str]]:
    if jobs == 1:
        return list(map(_deidentify_one, tasks))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_deidentify_one, tasks, chunksize=8))


def deid(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise UsageError(f"{src}: no such file or folder")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if not PARTNER_ID.fullmatch(args.partner):
        raise UsageError("--partner must be 2 to 63 lowercase letters, digits or '-', starting with a letter or digit")
    if args.keep_free_text and "cleanDescOpt" not in profiles.PROFILES[args.profile]:
        raise UsageError("--keep-free-text keeps cleaned free text: it needs Clean Descriptors (--profile clinical)")
    for sop_class in args.pixel_opt_in:
        if sop_class not in HIGH_RISK_SOP_CLASSES:
            raise UsageError(f"--pixel-opt-in {sop_class}: not a SOP class refused without an opt-in "
                             "(dicomshare.settings.HIGH_RISK_SOP_CLASSES)")
    options = _Options(dst, args.profile, args.keep_free_text, tuple(args.pixel_opt_in),
                       read_secret_file(Path(args.secret_file)), args.partner)
    paths = _inputs(src, dst)
    dst.mkdir(parents=True, exist_ok=True)
    results = _run([(p, options, None) for p in paths], args.jobs)
    later = [n for n, (reason, _, _) in enumerate(results) if reason == _LATER]
    if later:
        study_patients: dict[str, str] = {}
        for reason, study_uid, pseudonym in results:
            if reason in (None, DUPLICATE):
                study_patients.setdefault(study_uid, pseudonym)
        tasks = [(paths[n], options, study_patients) for n in later]
        for n, result in zip(later, _run(tasks, args.jobs)):
            results[n] = result
    reasons = [reason for reason, _, _ in results]
    refused = duplicates = 0
    for path, reason in zip(paths, reasons):
        shown = path.relative_to(src) if path != src else Path(path.name)
        if reason == DUPLICATE:
            duplicates += 1
            print(f"duplicate {shown}: the same output as another file")
        elif reason is not None:
            refused += 1
            print(f"refused {shown}: {reason}")
    written = len(paths) - refused - duplicates
    print(f"{written} de-identified, {duplicates} duplicate, {refused} refused, into {dst}")
    return EXIT_REFUSED if refused else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomshare", description="Share DICOM studies safely: de-identify, index, share."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    deid_parser = subparsers.add_parser(
        "deid",
        help="de-identify DICOM files on this machine (PS3.15 basic profile + options)",
        description="De-identify SRC (a file or a folder, recursively) into DST/<study>/<series>/<sop>.dcm. "
        "Exit status: 0 all de-identified, 3 some refused (one line each), 2 usage error.",
    )
    deid_parser.add_argument("src", metavar="SRC", help="DICOM file or folder")
    deid_parser.add_argument("dst", metavar="DST", help="output folder")
    deid_parser.add_argument(
        "--profile", choices=list(profiles.PROFILES), default="clinical",
        help="clinical (default: basic profile + modified dates + clean descriptors) or basic",
    )
    deid_parser.add_argument(
        "--secret-file", default=str(DEFAULT_SECRET_FILE),
        help=f"hex secret keying UIDs, pseudonyms and date shifts (default: {DEFAULT_SECRET_FILE}, created if missing)",
    )
    deid_parser.add_argument(
        "--partner", default=DEFAULT_PARTNER,
        help=f"partner id scoping UIDs, pseudonyms and date shifts, as the pipeline's partners (default: {DEFAULT_PARTNER})",
    )
    deid_parser.add_argument(
        "--keep-free-text", action="store_true",
        help="under Clean Descriptors also keep histories and comments, cleaned, as the partner setting "
        "keep_free_text does (default: removed)",
    )
    deid_parser.add_argument(
        "--pixel-opt-in", action="append", default=[], metavar="SOP_CLASS_UID",
        help="accept files of this high-risk SOP class (ultrasound, secondary capture, photographs, ...) without "
        "Burned In Annotation NO, as the partner setting pixel_opt_in does; repeat for several (default: none)",
    )
    deid_parser.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    deid_parser.set_defaults(func=deid)
    for command in entry_points(group=COMMANDS_GROUP):
        command.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"dicomshare: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
