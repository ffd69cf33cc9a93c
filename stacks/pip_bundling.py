"""Docker-free Lambda bundling: pip installs the function's pinned wheels for the Lambda
platform (Linux, arm64, CPython 3.12), the project's packages are copied beside them, and
everything is compiled to bytecode by a CPython of the runtime's version.

Bytecode: Lambda's deployment package is read-only, so a bundle without ``__pycache__``
makes every cold start compile each imported module again (1.0 s of the ingest
function's cold import; ``python -m bench scale``). The bytecode must come from an
interpreter of the runtime's minor version (the ``.pyc`` magic number changes with every
minor release; a 3.11 ``.pyc`` is ignored by 3.12), found by :func:`lambda_python`. It is
compiled with ``--invalidation-mode unchecked-hash``: timestamp-checked ``.pyc`` files
would be stale in Lambda, because CDK zips assets with a fixed modification time (for
reproducible hashes), and hash-checked ones would make each import read and hash its
source. The package never changes after it is built, so the bytecode needs no check.

CDK calls :meth:`PipBundling.try_bundle` instead of starting a container (the Docker image
named in the bundling options is never pulled). Stacks not selected for bundling (context
``aws:cdk:bundling-stacks``) are synthesized without calling it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import jsii

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("dicomshare", "dicomshare_aws", "lambdas")
"""Copied into every function's asset; handlers are ``lambdas.<function>.handler.handler``."""

LAMBDA_PYTHON_VERSION = "3.12"
LAMBDA_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
LAMBDA_PYTHON_ENV = "DICOMSHARE_LAMBDA_PYTHON"
"""Path of a CPython of :data:`LAMBDA_PYTHON_VERSION`, when it is not ``python3.12`` on the PATH."""
BYTECODE_MODE = "unchecked-hash"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.txt")


class NoLambdaPython(RuntimeError):
    """No interpreter of the Lambda runtime's version to compile the bundle's bytecode with."""


def _version_of(interpreter: str) -> str | None:
    try:
        result = subprocess.run([interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def lambda_python() -> str:
    """A CPython of the Lambda runtime's minor version: ``$DICOMSHARE_LAMBDA_PYTHON``, then
    ``python3.12`` on the PATH, then pyenv's and uv's installed 3.12 interpreters."""
    name = f"python{LAMBDA_PYTHON_VERSION}"
    home = Path.home()
    candidates = [os.environ.get(LAMBDA_PYTHON_ENV), shutil.which(name), sys.executable]
    for root in (Path(os.environ.get("PYENV_ROOT", home / ".pyenv")) / "versions",
                 home / ".local" / "share" / "uv" / "python"):
        candidates += sorted(str(p) for p in root.glob(f"*{LAMBDA_PYTHON_VERSION}*/bin/{name}"))
    for candidate in filter(None, candidates):
        if _version_of(candidate) == LAMBDA_PYTHON_VERSION:
            return candidate
    raise NoLambdaPython(
        f"bundling needs CPython {LAMBDA_PYTHON_VERSION} to compile bytecode for the Lambda runtime: install it "
        f"(for example 'uv python install {LAMBDA_PYTHON_VERSION}' or 'pyenv install {LAMBDA_PYTHON_VERSION}') "
        f"or point {LAMBDA_PYTHON_ENV} at one")


def compile_bytecode(target: str, interpreter: str) -> None:
    """Compile every module of ``target`` for the runtime (``__pycache__/*.cpython-312.pyc``).
    Files that are not valid Python 3 (a few test fixtures inside wheels) stay uncompiled,
    as they would be at run time; they are never imported."""
    subprocess.run([interpreter, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", BYTECODE_MODE,
                    target], check=False, stdout=subprocess.DEVNULL)


def requirements_file(function: str) -> Path:
    return PROJECT_ROOT / "lambdas" / function / "requirements.txt"


def pip_install_command(requirements: Path, target: str, platforms: tuple[str, ...] = LAMBDA_PLATFORMS) -> list[str]:
    """pip for the Lambda platform: wheels only, so nothing is built on this machine."""
    platforms = [arg for platform in platforms for arg in ("--platform", platform)]
    return [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "-r", str(requirements), "--target", target, *platforms,
        "--only-binary=:all:", "--python-version", LAMBDA_PYTHON_VERSION, "--implementation", "cp",
    ]


def source_hash(function: str) -> str:
    """Asset hash: the target platform, the function's requirements and every file of the
    project packages (so the bundle is rebuilt, and redeployed, exactly when one changes)."""
    digest = hashlib.sha256(" ".join((LAMBDA_PYTHON_VERSION, *LAMBDA_PLATFORMS, BYTECODE_MODE)).encode())
    digest.update(requirements_file(function).read_bytes())
    for package in PROJECT_PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@jsii.implements(cdk.ILocalBundling)
class PipBundling:
    """``ILocalBundling`` for one function (``ingest``, ``counts``, ``preview`` or ``api``)."""

    def __init__(self, function: str) -> None:
        self.function = function

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_options) -> bool:
        bundle(self.function, output_dir)
        return True


def bundle(function: str, output_dir: str, platforms: tuple[str, ...] = LAMBDA_PLATFORMS,
           bytecode: bool = True) -> None:
    """Install the function's requirements and the project packages into ``output_dir``,
    compiled for the runtime (``platforms`` and ``bytecode`` other than the defaults only
    for benchmarks on this machine)."""
    interpreter = lambda_python() if bytecode else None
    subprocess.run(pip_install_command(requirements_file(function), output_dir, platforms), check=True)
    for package in PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, Path(output_dir) / package, ignore=IGNORED, dirs_exist_ok=True)
    if interpreter:
        compile_bytecode(output_dir, interpreter)


def function_code(function: str) -> cdk.aws_lambda.Code:
    """The function's deployment package, bundled locally (never in Docker)."""
    return cdk.aws_lambda.Code.from_asset(
        str(requirements_file(function).parent),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=source_hash(function),
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry("none"),
            local=PipBundling(function),
        ),
    )
