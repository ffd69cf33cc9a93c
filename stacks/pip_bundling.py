"""Docker-free Lambda bundling: pip installs the function's pinned wheels for the Lambda
platform (Linux, arm64, CPython 3.12) and the project's packages are copied beside them.

CDK calls :meth:`PipBundling.try_bundle` instead of starting a container (the Docker image
named in the bundling options is never pulled). Stacks not selected for bundling (context
``aws:cdk:bundling-stacks``) are synthesized without calling it.
"""

from __future__ import annotations

import hashlib
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
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.txt")


def requirements_file(function: str) -> Path:
    return PROJECT_ROOT / "lambdas" / function / "requirements.txt"


def pip_install_command(requirements: Path, target: str) -> list[str]:
    """pip for the Lambda platform: wheels only, so nothing is compiled on this machine."""
    platforms = [arg for platform in LAMBDA_PLATFORMS for arg in ("--platform", platform)]
    return [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "-r", str(requirements), "--target", target, *platforms,
        "--only-binary=:all:", "--python-version", LAMBDA_PYTHON_VERSION, "--implementation", "cp",
    ]


def source_hash(function: str) -> str:
    """Asset hash: the target platform, the function's requirements and every file of the
    project packages (so the bundle is rebuilt, and redeployed, exactly when one changes)."""
    digest = hashlib.sha256(" ".join((LAMBDA_PYTHON_VERSION, *LAMBDA_PLATFORMS)).encode())
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
        subprocess.run(pip_install_command(requirements_file(self.function), output_dir), check=True)
        for package in PROJECT_PACKAGES:
            shutil.copytree(PROJECT_ROOT / package, Path(output_dir) / package, ignore=IGNORED, dirs_exist_ok=True)
        return True


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
