"""``dicomshare deid``: exit codes, output names from new UIDs, one line per refused file,
the partner settings as flags."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicomshare import cli

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "dicomshare"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture
def src(tmp_path) -> Path:
    folder = tmp_path / "in" / "Doe^Jane"
    folder.mkdir(parents=True)
    shutil.copy(TEST_FILES / "CT_small.dcm", folder / "Doe_Jane_1.dcm")
    shutil.copy(TEST_FILES / "MR_small.dcm", folder / "Doe_Jane_2.dcm")
    return tmp_path / "in"


def test_all_deidentified_exit_0_and_named_by_new_uids(tmp_path, src):
    result = run("deid", str(src), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == 2
    for output in outputs:
        ds = pydicom.dcmread(output)
        assert output.relative_to(tmp_path / "out").as_posix() == (
            f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        )
        assert "Doe" not in output.as_posix()
    secret_file = tmp_path / ".dicomshare" / "deid-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_text().strip()) == 64


def test_some_refused_exit_3_one_line_each(tmp_path, src):
    (src / "notes.txt").write_text("not dicom")
    shutil.copy(TEST_FILES / "MR_truncated.dcm", src / "broken.dcm")
    result = run("deid", str(src), str(tmp_path / "out"), "--jobs", "2", "--profile", "basic", cwd=tmp_path)
    assert result.returncode == 3
    refused = sorted(line for line in result.stdout.splitlines() if line.startswith("refused "))
    assert refused == ["refused broken.dcm: truncated", "refused notes.txt: not_dicom"]
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2


def test_same_secret_file_same_output(tmp_path, src):
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32)
    run("deid", str(src), str(tmp_path / "a"), "--secret-file", str(secret), cwd=tmp_path)
    run("deid", str(src), str(tmp_path / "b"), "--secret-file", str(secret), cwd=tmp_path)
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.dcm")}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.dcm")}
    assert a == b and len(a) == 2


@pytest.mark.parametrize(
    "args",
    [["deid"], ["deid", "missing-folder", "out"], ["deid", "in", "out", "--profile", "none"],
     ["deid", "in", "out", "--jobs", "0"], ["frobnicate"],
     ["deid", "in", "out", "--profile", "basic", "--keep-free-text"],
     ["deid", "in", "out", "--pixel-opt-in", "1.2.840.10008.5.1.4.1.1.2"]],
)
def test_usage_errors_exit_2(tmp_path, src, args):
    assert run(*args, cwd=tmp_path).returncode == 2


def test_short_secret_is_a_usage_error(tmp_path, src):
    (tmp_path / "weak").write_text("short")
    assert run("deid", str(src), "out", "--secret-file", "weak", cwd=tmp_path).returncode == 2


def one_file(tmp_path: Path, name: str, **values) -> Path:
    """CT_small.dcm (without Burned In Annotation) with ``values`` set, alone in a folder."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert "BurnedInAnnotation" not in ds
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    folder = tmp_path / name
    folder.mkdir()
    ds.save_as(folder / "1.dcm")
    return folder


def outputs(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def test_keep_free_text_keeps_a_clean_comment_the_default_removes(tmp_path):
    src = one_file(tmp_path, "in", ImageComments="Nodule stable since prior", PatientComments="Allergic to iodine")
    assert run("deid", str(src), str(tmp_path / "default"), cwd=tmp_path).returncode == 0
    assert run("deid", str(src), str(tmp_path / "kept"), "--keep-free-text", cwd=tmp_path).returncode == 0
    (removed,), (kept,) = outputs(tmp_path / "default"), outputs(tmp_path / "kept")
    assert "ImageComments" not in removed and "PatientComments" not in removed
    assert (kept.ImageComments, kept.PatientComments) == ("Nodule stable since prior", "Allergic to iodine")
    assert "free text kept" in kept.DeidentificationMethod and "free text kept" not in removed.DeidentificationMethod


def test_pixel_opt_in_accepts_a_high_risk_class_the_default_refuses(tmp_path):
    secondary_capture = "1.2.840.10008.5.1.4.1.1.7"
    src = one_file(tmp_path, "in", SOPClassUID=secondary_capture)
    refused = run("deid", str(src), str(tmp_path / "default"), cwd=tmp_path)
    assert refused.returncode == 3 and "refused 1.dcm: burned_in_annotation" in refused.stdout
    assert outputs(tmp_path / "default") == []
    accepted = run("deid", str(src), str(tmp_path / "opted"), "--pixel-opt-in", secondary_capture, cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stdout
    assert [ds.SOPClassUID for ds in outputs(tmp_path / "opted")] == [secondary_capture]


@pytest.mark.parametrize("command", [[], ["deid"], ["local"]])
def test_help_on_every_subcommand(command):
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
