"""De-identification throughput and memory: dicomshare vs dicognito, pydicom/deid and ``cp``.

Same data, same run:

- two 300-file 512x512 16-bit CT series whose headers are pydicom's ``CT_small.dcm`` (a
  GE scanner's: about 200 private elements, a sequence) with a few sequences more and the
  patient named in free text, one declaring ``ISO_IR 100`` (Latin-1), one ``ISO_IR 192``
  (UTF-8), as scanners write them. Each tool runs as a **whole process** on the folder,
  as a user runs it, start-up (interpreter, imports) included: ``dicomshare deid``,
  ``python -m dicognito``, a Python process calling pydicom/deid, and coreutils ``cp -r``.
  Besides the time from spawn to exit, the process's CPU time (user and system, from
  ``wait4``) is reported: on a shared machine it moves less. Peak RSS is also from
  ``wait4`` and, as below, carried over from this process: an upper bound;
- a >= 1 GiB multi-frame file (2100 frames of 512x512x16 bit, streamed to disk frame by
  frame, never held in memory), each tool in its own Python subprocess timed inside it
  (start-up, imports and set-up excluded: the copy is what is measured); peak RSS is the
  worker's ``ru_maxrss``, which Linux carries over from this process through ``exec``: an
  upper bound.

Each measurement is the fastest of five rounds (each round runs every tool in turn).
Targets (issue 12): >= 5x dicognito's files/s on each series, start-up included; within
1.5x of ``cp`` on the large file; peak memory < 200 MiB on the large file.

Run: ``python -m bench deid`` (peer tools: ``pip install -r bench/requirements.txt``).
It needs about 10 GiB free in the temporary folder, as series outputs are kept until the
end (see :func:`_measure`); for the same reason, start it a minute or more after
deleting many files on that file system, such as the previous run's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SERIES_FILES = 300
ROWS = COLUMNS = 512
LARGE_FRAMES = 2100
TOOLS = ("dicomshare", "dicognito", "deid", "cp")
PEER_MODULES = {"dicognito": "dicognito", "deid": "deid"}
TOOL_TIMEOUT_SECONDS = 900
REPEATS = 5
SETTLE_SECONDS = 1.0
SERIES = {
    "latin1": ("ISO_IR 100", "Müller^Jürgen", "Schröder^Anna", "Klinikum Köln-Merheim", "Thorax ärztliche Kontrolle"),
    "utf8": ("ISO_IR 192", "山田^太郎", "佐藤^花子", "東京大学医学部附属病院", "胸部 CT 経過観察 Kontrolle"),
}
"""The two series: Specific Character Set, patient, referring physician, institution and
study description (which also names the patient, for Clean Descriptors)."""
SECRET = "62656e6368" * 8
"""The benchmark's de-identification secret (``dicomshare deid --secret-file``)."""


def _header(frames: int, instance: int, study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Bench^Patient", "BENCH-0001", "19700101"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240102", "101010", "ACC0001"
    ds.StudyDescription, ds.SeriesDescription = "CT chest", "Axial 1mm"
    ds.InstitutionName, ds.ReferringPhysicianName = "Bench Hospital", "Doctor^Who"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0, 0, instance]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _scanner_header(name: str) -> Dataset:
    """A scanner's header for the series ``name`` of :data:`SERIES`: ``CT_small.dcm``'s
    (its GE private groups, Other Patient IDs Sequence, times, equipment), the patient and
    staff in the series' character set, and the sequences of a worklist-driven exam."""
    charset, patient, physician, institution, description = SERIES[name]
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.SpecificCharacterSet = charset
    ds.PatientName, ds.ReferringPhysicianName, ds.InstitutionName = patient, physician, institution
    ds.StudyDescription = f"{description} {patient.split('^')[0]}"
    ds.SeriesDescription = f"{description} 1.25 mm"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.ProcedureCodeSequence = Sequence([_code("CTTHOR", "L", description)])
    ds.AnatomicRegionSequence = Sequence([_code("T-D3000", "SRT", "Chest")])
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP4711", "SPS4711"
    request.ScheduledProcedureStepDescription = description
    request.ScheduledProtocolCodeSequence = Sequence([_code("CTTHOR", "L", description)])
    ds.RequestAttributesSequence = Sequence([request])
    step = Dataset()
    step.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    step.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedPerformedProcedureStepSequence = Sequence([step])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = ROWS, COLUMNS, 16, 12, 11
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def make_series(folder: Path, name: str) -> list[Path]:
    """:data:`SERIES_FILES` slices of the series ``name``: each its own instance UID,
    number, position, slice location and times."""
    folder.mkdir(parents=True)
    ds = _scanner_header(name)
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    paths = []
    for i in range(SERIES_FILES):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.699997 + 1.25 * i]
        ds.SliceLocation = f"{-75.699997 + 1.25 * i:.6f}"
        ds.AcquisitionTime = ds.ContentTime = f"1015{i // 60:02d}.{i % 60:02d}0000"
        path = folder / f"{ds.PatientName.family_name.replace(' ', '_')}_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_large(path: Path) -> Path:
    """Write the header with pydicom, then the Pixel Data element frame by frame."""
    ds = _header(LARGE_FRAMES, 1, generate_uid(), generate_uid())
    frame = np.random.default_rng(2).integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16).tobytes()
    with open(path, "wb") as out:
        ds.save_as(out, enforce_file_format=True)
        out.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, LARGE_FRAMES * len(frame)))
        for _ in range(LARGE_FRAMES):
            out.write(frame)
    return path


def _tool(tool: str, dst: Path):
    """Import and set up one tool; returns ``run(index, path)`` (set-up is not timed)."""
    if tool == "dicomshare":
        from dicomshare import profile
        from dicomshare.deidentify import deidentify_file

        clinical = profile.named("clinical")
        return lambda i, path: deidentify_file(path, dst, profile=clinical, secret=b"bench" * 8, partner="bench")
    if tool == "dicognito":
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer(seed="bench")

        def run(i: int, path: Path) -> None:
            ds = pydicom.dcmread(path)
            anonymizer.anonymize(ds)
            ds.save_as(dst / f"{i}.dcm")

        return run
    if tool == "deid":
        from deid.config import DeidRecipe
        from deid.dicom import replace_identifiers

        recipe = DeidRecipe()
        return lambda i, path: replace_identifiers(
            [str(path)], deid=recipe, save=True, output_folder=str(dst), remove_private=True
        )
    return lambda i, path: shutil.copyfile(path, dst / f"{i}.dcm")


def worker(tool: str, src: list[Path], dst: Path, ballast: Path) -> dict:
    """Run one tool over ``src`` into ``dst`` (in this process); seconds and peak RSS.

    ``ballast`` (:func:`_write_ballast`) is deleted just before the clock starts.
    """
    dst.mkdir(parents=True, exist_ok=True)
    run = _tool(tool, dst)
    ballast.unlink()
    started = time.perf_counter()
    for i, path in enumerate(src):
        run(i, path)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_tool(tool: str, src: list[Path], dst: Path, ballast: Path) -> dict | str:
    """The large file: :func:`worker` in a subprocess, which times the tool itself."""
    if tool in PEER_MODULES and importlib.util.find_spec(PEER_MODULES[tool]) is None:
        return "not installed (pip install -r bench/requirements.txt)"
    command = [sys.executable, "-m", "bench.deid", "--worker", tool, str(dst), str(ballast), *map(str, src)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return f"did not finish in {TOOL_TIMEOUT_SECONDS} s"
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _process_command(tool: str, src: Path, dst: Path, secret_file: Path) -> list[str]:
    """A tool run as a user runs it on the folder ``src``, writing into ``dst``."""
    if tool == "dicomshare":
        executable = str(Path(sys.executable).parent / "dicomshare")
        return [executable, "deid", str(src), str(dst), "--secret-file", str(secret_file), "--partner", "bench"]
    if tool == "dicognito":  # its console script is broken in 0.19.0 (main() takes the arguments)
        return [sys.executable, "-m", "dicognito", "--quiet", "--seed", "bench", "--output-directory", str(dst), str(src)]
    if tool == "deid":  # no command of its own for a folder: one Python process calling it
        return [sys.executable, "-m", "bench.deid", "--process", tool, str(dst), str(src)]
    return ["cp", "-r", str(src), str(dst)]


_PROCESS_ENVIRONMENT = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
"""The tools' environment: Python modules' bytecode cached, as for an installed package
(pip compiles the peers' at install; dicomshare, installed editable here, writes its own
on its first run, which the fastest of the rounds leaves out). The development machine's
shell sets ``PYTHONDONTWRITEBYTECODE``, which would have dicomshare compile its modules on
every start (0.13 s)."""


def _run_process(tool: str, src: Path, dst: Path, ballast: Path, secret_file: Path) -> dict | str:
    """A series: the tool's whole process, timed from spawn to exit (start-up included),
    its peak RSS from ``wait4``. ``ballast`` is deleted just before the spawn."""
    if tool in PEER_MODULES and importlib.util.find_spec(PEER_MODULES[tool]) is None:
        return "not installed (pip install -r bench/requirements.txt)"
    command = _process_command(tool, src, dst, secret_file)
    with tempfile.TemporaryFile() as errors:
        ballast.unlink()
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=_PROCESS_ENVIRONMENT)
        timer = threading.Timer(TOOL_TIMEOUT_SECONDS, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            return "failed: " + (errors.read().decode(errors="replace").strip().splitlines() or ["?"])[-1][:120]
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mib": usage.ru_maxrss / 1024}


def process(tool: str, dst: Path, src: Path) -> None:
    """The whole-process run of a tool without a command for folders (pydicom/deid)."""
    dst.mkdir(parents=True, exist_ok=True)
    run = _tool(tool, dst)
    for i, path in enumerate(sorted(p for p in src.rglob("*") if p.is_file())):
        run(i, path)


def _cache(paths: list[Path]) -> None:
    """Read ``paths`` through, so that they are all in the page cache when a tool starts.

    The development machine's kernel reclaims pages left idle for some seconds (DAMON):
    without this, a tool could pay disk reads that the tool before it did not.
    """
    buffer = bytearray(1024**2)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def _write_ballast(path: Path, size: int) -> None:
    """Write ``size`` bytes to ``path`` and leave them in the page cache (not synced).

    The worker deletes it just before its clock starts, so the tool's output goes into
    page cache that the machine has just used. The development machine is a VM that
    gives freed memory back to its host within half a second (virtio-balloon free page
    reporting), and memory touched again after that costs a host fault per page: copying
    the 1 GiB file took 2.5 s into such memory and 0.33 s after deleting a ballast
    (measured), for ``cp`` as for any tool.
    """
    block = bytes(1024**2)
    with open(path, "wb") as f:
        for _ in range(-(-size // len(block))):
            f.write(block)


def _best_of(runs: list[dict | str]) -> dict | str:
    """Fastest of the runs (the machine may be shared), with the largest peak RSS."""
    failures = [r for r in runs if isinstance(r, str)]
    if failures:
        return failures[0]
    best = {"seconds": min(r["seconds"] for r in runs), "max_rss_mib": max(r["max_rss_mib"] for r in runs)}
    if all("cpu_seconds" in r for r in runs):
        best["cpu_seconds"] = min(r["cpu_seconds"] for r in runs)
    return best


def _measure(inputs: dict[str, list[Path]], out: Path, secret_file: Path) -> dict[str, dict[str, dict | str]]:
    """:data:`REPEATS` rounds, each running every tool once on every input in turn: the
    series as whole processes (:func:`_run_process`), the large file in a worker that
    times the copy (:func:`_run_tool`).

    Rounds interleave the tools, so a busy spell on a shared machine slows all of them
    rather than the runs of one. Before each run dirty pages are flushed (``os.sync``),
    the disk gets :data:`SETTLE_SECONDS` to finish with freed blocks (on a file system
    mounted with ``discard`` the kernel trims them after the sync returns) and the inputs
    are read once (:func:`_cache`), and a ballast the size of the inputs is written, to be
    deleted just before the run (:func:`_write_ballast`), so every run starts from the
    same state: inputs in the page cache, nothing waiting to be written or trimmed, memory
    ready for the output. (A whole process starts up before it writes: the VM may have
    taken some of the ballast's memory back by then, for every tool alike.)

    Each run writes to a folder of its own, and series outputs are kept until the end:
    ext4 without a journal (the development machine's) does not reuse an inode for a
    minute after its deletion, and every file created meanwhile in the same block group
    first checks each recently deleted inode in turn (``recently_deleted`` in
    ``fs/ext4/ialloc.c``). After 300 deleted files, creating a file took 0.3 ms instead of
    0.012 ms (measured), a cost the run after a deletion would pay for its predecessor.
    The large file's output, one inode, is deleted at once to give its 1 GiB back.
    """
    runs: dict[tuple[str, str], list[dict | str]] = {(t, n): [] for t in TOOLS for n in inputs}
    out.mkdir()
    for round_number in range(REPEATS):
        for tool in TOOLS:
            for name, src in inputs.items():
                if any(isinstance(r, str) for r in runs[(tool, name)]):
                    continue
                os.sync()
                time.sleep(SETTLE_SECONDS)
                _cache(src)
                ballast = out / "ballast"
                _write_ballast(ballast, sum(path.stat().st_size for path in src))
                dst = out / f"{tool}-{name}-{round_number}"
                if len(src) == 1:  # the large file: one inode, and 1 GiB to give back
                    runs[(tool, name)].append(_run_tool(tool, src, dst, ballast))
                    shutil.rmtree(dst, ignore_errors=True)
                else:
                    runs[(tool, name)].append(_run_process(tool, src[0].parent, dst, ballast, secret_file))
                ballast.unlink(missing_ok=True)
    return {tool: {name: _best_of(runs[(tool, name)]) for name in inputs} for tool in TOOLS}


def _cell(result: dict | str, key: str, fmt: str) -> str:
    return format(result[key], fmt) if isinstance(result, dict) else "n/a"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dicomshare-bench-") as tmp:
        root = Path(tmp)
        print(f"generating two {SERIES_FILES}-file {ROWS}x{COLUMNS} CT series and a {LARGE_FRAMES}-frame file ...")
        inputs = {name: make_series(root / name, name) for name in SERIES}
        inputs["large"] = [make_large(root / "large.dcm")]
        print(f"large file: {inputs['large'][0].stat().st_size / 1024**3:.2f} GiB")
        secret_file = root / "secret"
        secret_file.write_text(SECRET)
        results = _measure(inputs, root / "out", secret_file)
    ours = results["dicomshare"]
    print()
    print("| tool | Latin-1 series files/s | UTF-8 series files/s | series peak RSS (MiB) | large file s "
          "| large peak RSS (MiB) | notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for tool, res in results.items():
        notes = "; ".join(f"{k}: {v}" for k, v in res.items() if isinstance(v, str))
        rates = [f"{SERIES_FILES / res[n]['seconds']:.1f}" if isinstance(res[n], dict) else "n/a" for n in SERIES]
        peaks = [res[n]["max_rss_mib"] for n in SERIES if isinstance(res[n], dict)]
        peak = f"{max(peaks):.0f}" if peaks else "n/a"
        print(f"| {tool} | {' | '.join(rates)} | {peak} | "
              f"{_cell(res['large'], 'seconds', '.2f')} | {_cell(res['large'], 'max_rss_mib', '.0f')} | {notes} |")
    print()
    print("| tool | Latin-1 series: s, CPU s | UTF-8 series: s, CPU s |")
    print("| --- | ---: | ---: |")
    for tool, res in results.items():
        cells = [f"{res[n]['seconds']:.2f}, {res[n]['cpu_seconds']:.2f}" if isinstance(res[n], dict) else "n/a"
                 for n in SERIES]
        print(f"| {tool} | {' | '.join(cells)} |")
    print()
    for name in SERIES:
        for peer in ("dicognito", "deid"):
            if isinstance(ours[name], dict) and isinstance(results[peer][name], dict):
                ratio = results[peer][name]["seconds"] / ours[name]["seconds"]
                cpu = results[peer][name]["cpu_seconds"] / ours[name]["cpu_seconds"]
                print(f"{name} series, whole processes: dicomshare files/s = {ratio:.1f} x {peer}"
                      f" (CPU time: {cpu:.1f} x; target vs dicognito: >= 5x)")
    if isinstance(ours["large"], dict) and isinstance(results["cp"]["large"], dict):
        print(f"large file: dicomshare time = {ours['large']['seconds'] / results['cp']['large']['seconds']:.2f} x cp "
              f"(target <= 1.5x); peak RSS {ours['large']['max_rss_mib']:.0f} MiB (target < 200 MiB)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        tool, destination, ballast, *sources = sys.argv[2:]
        print(json.dumps(worker(tool, [Path(s) for s in sources], Path(destination), Path(ballast))))
    elif sys.argv[1:2] == ["--process"]:
        process(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
