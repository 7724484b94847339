"""The Lambda deployment package: handler, the worker's modules, their dependencies.

The zip holds ``handler/lambda_function.py``, a ``dolambda/__init__.py`` that imports
nothing (the real one would pull in aioboto3), the modules the worker needs, and
dill/pydantic/numpy (pinned to the client's dill and pydantic versions) plus the
user's requirements, installed by pip for the Lambda platform. boto3 is left out:
the Lambda runtime ships it. Builds are cached by a hash of all their inputs.

:func:`build_task_root` is the same package for this machine, offline: an unpacked
directory (the emulator's ``LAMBDA_TASK_ROOT``) whose dependencies are copied from
this interpreter's installed distributions instead of installed by pip, compiled
with unchecked hash-based ``.pyc`` files (the tree never changes once built: it is
keyed by its inputs), so a cold start imports without recompiling.
"""

from __future__ import annotations

import base64
import compileall
import hashlib
import json
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from dolambda._errors import DeployError, InvalidArgument
from dolambda.deploy.installed import closure, copy_distributions, normalize

# exactly what handler/lambda_function.py and dolambda._core.bodies (the loop bodies
# dolambda itself sends: the Executor's, the demo's) import, transitively (the package's
# dolambda/__init__.py imports nothing; the subpackages' __init__.py are empty)
WORKER_MODULES = (
    "_errors.py",
    "_aws/__init__.py",
    "_aws/errors.py",
    "_aws/watchdog.py",
    "_aws/worker.py",
    "_code/__init__.py",
    "_code/archive.py",
    "_code/loader.py",
    "_core/__init__.py",
    "_core/bodies.py",
    "_core/execute.py",
    "_core/seeds.py",
    "_wire/__init__.py",
    "_wire/codec.py",
    "_wire/keys.py",
    "_wire/models.py",
)
HANDLER_FILES = ("__init__.py", "lambda_function.py")
# A zip up to this size goes in the CreateFunction/UpdateFunctionCode request itself
# (``ZipFile``), a larger one through S3. Lambda's quota is "50 MB zipped, for direct
# upload", but the zip travels base64'd in a JSON request that Lambda caps at 69,905,067
# bytes ("Request must be smaller than 69905067 bytes for the CreateFunction operation"):
# 50 MiB in base64 is 69,905,068 bytes before the rest of the request. 48 MiB leaves
# ~2.8 MB for the configuration and environment that share the request.
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
DIRECT_UPLOAD_LIMIT = 48 * 1024 * 1024
#: the most bytes a CreateFunction or UpdateFunctionCode request may carry
LAMBDA_REQUEST_LIMIT = 69_905_067
UNZIPPED_LIMIT = 250 * 1024 * 1024  # Lambda's limit for the unzipped package
EXCLUDED = ("boto3", "botocore", "s3transfer", "bin")  # the runtime ships boto3
_BUILD_FORMAT = "dolambda-package-1"
_TASK_ROOT_FORMAT = "dolambda-task-root-1"

#: The deployed ``dolambda/__init__.py``: it imports nothing when the handler loads, and
#: serves the public names whose modules the package holds, on first use, so a user's
#: module that does ``from dolambda import rng`` loads on the worker as it does here.
MINIMAL_INIT = '''"""dolambda as deployed to Lambda: the worker's modules only; imports nothing
until a public name the package holds (rng, the exception classes) is first used."""

__version__ = "{version}"

_ERRORS = (
    "BackendError ConfigError DeployError DolambdaError InvalidArgument InvalidArgumentType "
    "JobCancelled SerializationError SignatureError StorageError TaskError VersionMismatch"
)
_WHERE = {{"rng": "dolambda._core.seeds", **dict.fromkeys(_ERRORS.split(), "dolambda._errors")}}


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None and name.startswith("_"):
        raise AttributeError(f"module 'dolambda' has no attribute {{name!r}}")
    if module is None:  # ImportError, not AttributeError: `from dolambda import x` keeps it
        raise ImportError(
            f"cannot import name {{name!r}} from dolambda on the Lambda worker: the "
            "deployed package holds only the worker's part of dolambda (rng and the "
            "exception classes); import the rest inside code that runs on the client",
            name="dolambda",
        )
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
'''


@dataclass(frozen=True)
class Package:
    """A built zip: where it is, Lambda's CodeSha256 of it, and its sizes in bytes."""

    path: Path
    code_sha256: str
    size: int
    unzipped_size: int
    cached: bool

    def read(self) -> bytes:
        return self.path.read_bytes()


# The Python versions AWS Lambda has a supported managed runtime for (``python3.X``), from
# dolambda's own floor (3.11) up. The one list. python3.9 was deprecated on 2025-12-15 and
# python3.10 on 2026-06-30 (no more patches, then no creates or updates):
# https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html
LAMBDA_PYTHONS: tuple[str, ...] = ("3.11", "3.12", "3.13", "3.14")
#: runtimes Lambda deprecated, and since when: deploy refuses them with that reason
DEPRECATED_PYTHONS: dict[str, str] = {"3.9": "2025-12-15", "3.10": "2026-06-30"}
ARCHITECTURES: dict[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda -> wheel tag
# The glibc of each runtime's OS: Amazon Linux 2 (2.26) up to 3.11, Amazon Linux 2023 (2.34) after.
LAMBDA_GLIBC: dict[str, int] = {
    "3.11": 26,
    "3.12": 34,
    "3.13": 34,
    "3.14": 34,
}


def python_version() -> str:
    """The client's own ``major.minor``: the deployed runtime must match it (dill)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_platforms(version: str, architecture: str) -> list[str]:
    """pip ``--platform`` tags whose wheels run on the Lambda runtime ``python<version>``."""
    arch = ARCHITECTURES[architecture]
    newest = LAMBDA_GLIBC.get(version, 26)
    return [f"manylinux2014_{arch}", *(f"manylinux_2_{m}_{arch}" for m in range(17, newest + 1))]


def runtime_for(version: str) -> str:
    """``python3.X`` for ``version``, or an error explaining that Lambda has no such runtime."""
    if version in DEPRECATED_PYTHONS:
        raise InvalidArgument(
            f"AWS Lambda's python{version} runtime is deprecated (since "
            f"{DEPRECATED_PYTHONS[version]}: no security patches, then no new or updated "
            f"functions); dolambda deploys only supported runtimes "
            f"({', '.join('python' + v for v in LAMBDA_PYTHONS)}). The function must run the "
            "client's own Python minor version (dill pickles are not portable across "
            "versions): run dolambda from one of those Pythons"
        )
    if version not in LAMBDA_PYTHONS:
        raise InvalidArgument(
            f"AWS Lambda has no python{version} runtime (it has "
            f"{', '.join('python' + v for v in LAMBDA_PYTHONS)}). The function must run the "
            "client's own Python minor version, because dill pickles are not portable across "
            f"versions: run dolambda from Python {LAMBDA_PYTHONS[-3]} or another supported version"
        )
    return f"python{version}"


def cache_dir() -> Path:
    """``$DOLAMBDA_CACHE_DIR``, else ``$XDG_CACHE_HOME/dolambda/packages`` (or ``~/.cache``)."""
    explicit = os.environ.get("DOLAMBDA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dolambda" / "packages"


def _sources() -> dict[str, Path]:
    """Archive name -> local file for the handler and the worker's modules."""
    import dolambda

    pkg = Path(dolambda.__file__).parent
    handler_dir = pkg.parent / "handler"
    if not (handler_dir / "lambda_function.py").is_file():
        import importlib.util

        spec = importlib.util.find_spec("handler.lambda_function")
        if spec is None or spec.origin is None:
            raise DeployError("cannot find handler/lambda_function.py next to the dolambda package")
        handler_dir = Path(spec.origin).parent
    out = {f"dolambda/{name}": pkg / name for name in WORKER_MODULES}
    out.update({f"handler/{name}": handler_dir / name for name in HANDLER_FILES})
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def worker_requirements() -> list[str]:
    """The worker's requirements: dill and pydantic pinned to the client's (pickles must match).

    numpy is not pinned: the client's version may have no wheel for the runtime's glibc.
    """
    out = []
    for dist in ("dill", "pydantic"):
        version = _version(dist)
        out.append(f"{dist}=={version}" if version else dist)
    return [*out, "numpy"]


def _dolambda_version() -> str:
    import dolambda

    return str(getattr(dolambda, "__version__", "0"))


def build_package(
    *,
    architecture: str = "x86_64",
    python: str | None = None,
    requirements: Path | None = None,
    dependencies: bool = True,
    target: Literal["lambda", "local"] = "lambda",
    cache: Path | None = None,
    unzipped_limit: int = UNZIPPED_LIMIT,
) -> Package:
    """Build (or reuse from the cache) the zip for ``python`` (default: ours) and ``architecture``.

    ``target="local"`` installs wheels for this machine instead of the Lambda platform
    (for tests); ``dependencies=False`` packages only dolambda's own files (fast; for
    tests that never run the code). Raises :class:`DeployError` with pip's reason when
    the requirements do not resolve for the platform, or listing the largest packages
    when the unzipped size exceeds Lambda's limit.
    """
    if architecture not in ARCHITECTURES:
        raise DeployError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    python = python or python_version()
    sources = _sources()
    reqs_text = Path(requirements).read_text() if requirements is not None else ""
    deps = worker_requirements() if dependencies else []
    h = hashlib.sha256()
    for part in (_BUILD_FORMAT, python, architecture, target, _dolambda_version(), *deps):
        h.update(part.encode() + b"\0")
    h.update(b"requirements\0" + reqs_text.encode() + b"\0")
    h.update(b"init\0" + MINIMAL_INIT.encode() + b"\0")  # written, not among the sources
    for name, path in sorted(sources.items()):
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest = h.hexdigest()[:24]
    root = cache or cache_dir()
    path = root / f"lambda-py{python}-{architecture}-{target}-{digest}.zip"
    if path.exists():
        return _describe(path, cached=True)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dolambda-build-") as tmp:
        tree = Path(tmp) / "package"
        tree.mkdir()
        if deps or requirements is not None:
            _pip_install(tree, deps, requirements, python=python, arch=architecture, target=target)
        for name in EXCLUDED:
            for junk in [tree / name, *tree.glob(f"{name}-*.dist-info")]:
                if junk.is_dir():
                    shutil.rmtree(junk)
        _write_sources(tree, sources)
        _check_unzipped(tree, unzipped_limit)
        partial = path.with_suffix(f".{os.getpid()}.part")
        _zip_tree(tree, partial)
        os.replace(partial, path)
    return _describe(path, cached=False)


def _write_sources(tree: Path, sources: dict[str, Path]) -> None:
    """The handler and the worker's modules, with the ``dolambda/__init__.py`` that imports
    nothing."""
    for name, src in sources.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tree / name)
    (tree / "dolambda" / "__init__.py").write_text(MINIMAL_INIT.format(version=_dolambda_version()))


def build_task_root(cache: Path | None = None, requirements: Iterable[str] = ()) -> Path:
    """The deployment package for this machine, unpacked: the emulator's task root.

    The same files as :func:`build_package` (the handler, the worker's modules, the
    worker's requirements without boto3, and ``requirements``: the distributions
    ``dolambda deploy --requirements`` would add, e.g. ``["pandas"]``), but offline: the
    requirements and their closure are copied from this interpreter's installed
    distributions, at the versions installed here. Cached under ``cache`` (default
    :func:`cache_dir`) by a hash of the worker's sources, the distributions' names and
    versions and the interpreter; built in a temporary directory and renamed into place (atomic: a
    concurrent builder's copy wins). ``package.json`` records what it holds. Prints
    one line when it has to build.
    """
    names = [re.split(r"[=<>!~ ]", req, maxsplit=1)[0] for req in worker_requirements()]
    names += sorted(set(requirements) - set(names))
    dists = closure(names)
    versions = {normalize(d.metadata["Name"]): d.version for d in dists}
    excluded = sorted(set(versions) & set(EXCLUDED))
    if excluded:  # as in the zip: the runtime ships them
        raise DeployError(f"the worker's requirements pull in {', '.join(excluded)}")
    sources = _sources()
    record = {
        "format": _TASK_ROOT_FORMAT,
        "python": python_version(),
        "implementation": sys.implementation.cache_tag,
        "dolambda": _dolambda_version(),
        "distributions": versions,
    }
    h = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    h.update(b"\0init\0" + MINIMAL_INIT.encode())  # written, not among the sources
    for name, path in sorted(sources.items()):
        h.update(b"\0" + name.encode() + b"\0" + path.read_bytes())
    root = cache or cache_dir()
    final = root / f"task-root-{sys.implementation.cache_tag}-{h.hexdigest()[:24]}"
    if (final / "package.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    print("building the emulator's function package (first start only)...", flush=True)
    build = Path(tempfile.mkdtemp(prefix=".build-task-root-", dir=root))
    try:
        copy_distributions(names, build)
        _write_sources(build, sources)
        # Unchecked hash-based pycs (PEP 552): valid whatever the files' mtimes, never
        # re-checked against the source; the tree is immutable once renamed into place.
        compileall.compile_dir(
            build,
            quiet=1,
            workers=1,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        (build / "package.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(build, final)
        except OSError:  # another process built it first
            if not (final / "package.json").is_file():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return final


def _pip_install(
    tree: Path,
    deps: list[str],
    requirements: Path | None,
    *,
    python: str,
    arch: str,
    target: str,
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(tree),
        "--no-input",
        "--disable-pip-version-check",
        "--quiet",
    ]
    if target == "local":
        cmd.append("--no-compile")  # Lambda's /var/task is read-only: ship .pyc there only
    platforms = wheel_platforms(python, arch)
    if target == "lambda":
        cmd += [p for tag in platforms for p in ("--platform", tag)]
        cmd += [
            "--only-binary=:all:",
            "--python-version",
            python,
            "--implementation",
            "cp",
        ]
    cmd += deps
    if requirements is not None:
        cmd += ["-r", str(requirements)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()] or lines
        reason = "\n  ".join(errors[-8:]) or f"pip exited with code {proc.returncode}"
        what = f"the requirements in {requirements}" if requirements else "dolambda's dependencies"
        where = (
            f"the Lambda platform ({platforms[-1]} or older, CPython {python}, binary wheels only)"
            if target == "lambda"
            else "this machine"
        )
        raise DeployError(f"pip could not install {what} for {where}:\n  {reason}")


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_unzipped(tree: Path, limit: int) -> None:
    sizes = {p.name: _tree_size(p) for p in tree.iterdir() if not p.name.endswith(".dist-info")}
    total = _tree_size(tree)
    if total <= limit:
        return
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
    listing = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in largest)
    raise DeployError(
        f"the Lambda package would be {total / 1e6:.1f} MB unzipped, over Lambda's "
        f"{limit / 1e6:.0f} MB limit; the largest packages: {listing}. Trim --requirements "
        "(or use a container image for heavy dependencies)"
    )


def _zip_tree(tree: Path, dest: Path) -> None:
    """A reproducible zip: sorted entries, fixed timestamps, world-readable modes."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), (1980, 1, 1, 0, 0, 0))
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())


def _describe(path: Path, *, cached: bool) -> Package:
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        unzipped = sum(i.file_size for i in zf.infolist())
    return Package(
        path=path,
        code_sha256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        size=len(data),
        unzipped_size=unzipped,
        cached=cached,
    )
