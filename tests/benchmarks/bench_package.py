"""The deployment package's cold start: ``python tests/benchmarks/bench_package.py``.

Builds the package for this machine (``build_package(target="local")``, pip), unpacks
it as Lambda does (every file's mtime is the zip's 1980 timestamp), and times fresh
``python -I -B`` interpreters (``-B``: /var/task is read-only, nothing is written back)
importing from it, median of N runs:

- numpy + pydantic + dill with the package's unchecked hash-based pycs, against the
  same tree with pip's timestamp pycs (what the zip shipped before: stale, so every
  cold start recompiled) and with no pycs at all;
- boto3 (bundled now) imported and an S3 client made;
- the zip's size, and how much of it is boto3/botocore and their dependencies.
"""

from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dolambda.deploy import package  # noqa: E402

RUNS = 7
SDK = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")
EPOCH = 315532800  # 1980-01-01, what a zip stores


def unpack(zip_path: Path, dest: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    for path in dest.rglob("*"):
        os.utime(path, (EPOCH, EPOCH))


def cold(tree: Path, code: str) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-I",
                "-B",
                "-c",
                f"import sys; sys.path.insert(0, {str(tree)!r})\n{code}",
            ],
            check=True,
            cwd=tree,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="bench-package-"))
    try:
        pkg = package.build_package(target="local", cache=cache)
        with zipfile.ZipFile(pkg.path) as zf:
            infos = zf.infolist()
        sdk = sum(i.compress_size for i in infos if i.filename.split("/")[0] in SDK)
        sdk_unzipped = sum(i.file_size for i in infos if i.filename.split("/")[0] in SDK)
        print(
            f"zip {pkg.size / 1e6:.1f} MB ({pkg.unzipped_size / 1e6:.1f} MB unzipped); "
            f"boto3 and its deps {sdk / 1e6:.1f} MB zipped, {sdk_unzipped / 1e6:.1f} MB unzipped"
        )
        hashed = cache / "hashed"
        unpack(pkg.path, hashed)
        stale = cache / "stale"
        shutil.copytree(hashed, stale)
        for pyc in stale.rglob("*.pyc"):
            pyc.unlink()
        compileall.compile_dir(stale, quiet=1)  # timestamp pycs of the sources' mtimes ...
        for path in stale.rglob("*.py"):
            os.utime(path, (EPOCH + 7, EPOCH + 7))  # ... which are not the zip's: stale
        bare = cache / "bare"
        shutil.copytree(hashed, bare)
        for pyc in bare.rglob("*.pyc"):
            pyc.unlink()
        imports = "import numpy, pydantic, dill"
        for name, tree in (("hash pycs", hashed), ("stale pycs", stale), ("no pycs", bare)):
            print(f"{imports:<40} {name:<11} {cold(tree, imports) * 1000:7.0f} ms")
        sdk_code = "import boto3; boto3.client('s3', region_name='us-east-1')"
        took = cold(hashed, sdk_code) * 1000
        print(f"{'boto3 + an S3 client':<40} {'hash pycs':<11} {took:7.0f} ms")
        print(f"{'python -I -B -c pass':<40} {'':<11} {cold(hashed, 'pass') * 1000:7.0f} ms")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
