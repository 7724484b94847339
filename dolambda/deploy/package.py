"""The Lambda deployment package: handler, the worker's modules, their dependencies.

The zip holds ``handler/lambda_function.py``, a ``dolambda/__init__.py`` that imports
nothing (the real one would pull in aioboto3), the modules the worker needs, and
dill/pydantic/boto3/botocore pinned to the client's versions, numpy and the user's
requirements, installed by pip for the Lambda platform. The distributions that carry
data or random streams (:data:`DATA_DISTRIBUTIONS`: numpy, pandas, ...) are pinned to
the client's versions; when the platform has no wheel for one, the build stops and
says what the choices are. ``package.json`` inside the zip records what it holds
(:func:`package_record`); deploy also stores that record for the client
(:mod:`dolambda.deploy.record`). Every ``.py`` is compiled to an unchecked hash-based
``.pyc`` (:func:`_compile`), so a cold start never recompiles.

Builds are cached under :func:`cache_dir` by what they install: pip resolves the
requirements first (``--dry-run --report``), and the key holds each resolved name and
version and the content hash of each local path, with the worker's sources.

:func:`build_task_root` is the same package for this machine, offline: an unpacked
directory (the emulator's ``LAMBDA_TASK_ROOT``) whose dependencies are copied from
this interpreter's installed distributions instead of installed by pip, compiled
with unchecked hash-based ``.pyc`` files (the tree never changes once built: it is
keyed by its inputs), so a cold start imports without recompiling.
"""

from __future__ import annotations

import base64
import compileall
import contextlib
import hashlib
import json
import os
import platform
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dolambda._errors import DeployError, InvalidArgument
from dolambda._wire import keys as _keys
from dolambda._wire.events import FEATURES
from dolambda.deploy.installed import closure, copy_distributions, normalize

if TYPE_CHECKING:  # settings imports this module
    from dolambda.deploy.aws import Clients
    from dolambda.deploy.settings import Change, DeploySettings

# exactly what handler/lambda_function.py and dolambda._core.bodies (the loop bodies
# dolambda itself sends: the Executor's, the demo's) import, transitively (the package's
# dolambda/__init__.py imports nothing; the subpackages' __init__.py are empty)
WORKER_MODULES = (
    "_errors.py",
    "_aws/__init__.py",
    "_aws/dispatcher.py",
    "_aws/errors.py",
    "_aws/percall.py",
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
    "_wire/events.py",
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
# Distributions that carry data or random streams across (pickled arrays and frames,
# seeded generators): pinned to the client's versions in the package, and a job warns
# when the function's version differs from the client's.
DATA_DISTRIBUTIONS = ("numpy", "pandas", "pyarrow", "scipy", "polars", "scikit-learn", "xarray")
BUNDLED_SDK = ("boto3", "botocore")  # bundled, pinned to the client's (worker_requirements)
SDK_FLOORS = {"boto3": ">=1.35", "botocore": ">=1.35"}  # IfNoneMatch: botocore 1.35 (2024-08)
RECORD_NAME = "package.json"  # what the package holds, inside it (package_record)
RECORD_FORMAT = "dolambda-package-record-1"
_BUILD_FORMAT = "dolambda-package-2"
_TASK_ROOT_FORMAT = "dolambda-task-root-2"

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
    record: dict[str, Any] = field(default_factory=dict)  # its package.json

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
    """The worker's requirements: dill, pydantic and boto3/botocore pinned to the client's.

    dill and pydantic must match the client's (the pickles and wire models cross);
    boto3/botocore are bundled rather than left to the runtime's copy, whose version
    AWS no longer documents ("depends on the runtime version and your AWS Region")
    and may predate ``IfNoneMatch`` (botocore 1.35, August 2024): AWS recommends
    bundling the SDK a function depends on
    (https://docs.aws.amazon.com/lambda/latest/dg/python-package.html#python-package-dependencies).
    numpy is named unpinned here: :func:`data_pins` pins it (and the other
    :data:`DATA_DISTRIBUTIONS`) to the client's version when the platform has a wheel.
    """
    out = []
    for dist in ("dill", "pydantic", *BUNDLED_SDK):
        version = _version(dist)
        out.append(f"{dist}=={version}" if version else f"{dist}{SDK_FLOORS.get(dist, '')}")
    return [*out, "numpy"]


def requirement_name(line: str) -> str | None:
    """The normalized distribution name a requirements line names (None for options,
    comments, paths and URLs: those are hashed by content or left to pip)."""
    text = line.split("#", 1)[0].strip()
    if not text or text.startswith("-") or "://" in text or text.startswith((".", "/", "~")):
        return None
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return normalize(match.group(1)) if match else None


def _user_pinned(requirements_text: str) -> set[str]:
    """Distributions the user's requirements give a version specifier to: their pin wins."""
    pinned = set()
    for line in requirements_text.splitlines():
        name = requirement_name(line)
        rest = line.split("#", 1)[0].split(";", 1)[0]
        if name and re.search(r"(==|>=|<=|~=|!=|<|>|@)", rest):
            pinned.add(name)
    return pinned


def data_pins(resolved: dict[str, str], requirements_text: str) -> dict[str, str]:
    """``{name: client version}`` for each :data:`DATA_DISTRIBUTIONS` entry that the
    function would get at another version than the client has, unless the user's
    requirements pin it themselves."""
    user = _user_pinned(requirements_text)
    pins = {}
    for name in DATA_DISTRIBUTIONS:
        here = _version(name)
        if here is None or name in user or name not in resolved:
            continue
        if resolved[name] != here:
            pins[name] = here
    return pins


class PipFailed(Exception):
    """pip exited with an error; ``lines`` are its output lines."""

    def __init__(self, lines: list[str], returncode: int) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.returncode = returncode


def _pip_options(python: str, arch: str, target: str) -> list[str]:
    opts = ["--no-input", "--disable-pip-version-check"]
    if target == "lambda":
        opts += [p for tag in wheel_platforms(python, arch) for p in ("--platform", tag)]
        opts += ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    return opts


def _run_pip(args: list[str]) -> str:
    """Run pip (``sys.executable -m pip``) and return its stdout; PipFailed when it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise PipFailed(lines, proc.returncode)
    return proc.stdout


def resolve_requirements(
    reqs: list[str], requirements: Path | None, *, python: str, arch: str, target: str
) -> list[Resolved]:
    """What pip would install for ``reqs`` and the requirements file on the platform
    (``pip install --dry-run --report``: metadata only, nothing is unpacked).

    The seam the build cache and the pins go through (tests replace it)."""
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
    args += _pip_options(python, arch, target) + reqs
    if requirements is not None:
        args += ["-r", str(requirements)]
    report = json.loads(_run_pip(args) or "{}")
    out = []
    for item in report.get("install", ()):
        meta = item.get("metadata", {})
        url = str(item.get("download_info", {}).get("url", ""))
        local = ""
        if url.startswith("file://"):  # a local path: its content, not its version, counts
            local = _content_hash(Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)))
        out.append(Resolved(normalize(str(meta.get("name", ""))), str(meta.get("version")), local))
    return sorted(out)


@dataclass(frozen=True, order=True)
class Resolved:
    """One distribution a build installs: its name, version, and for a local path the
    hash of its content (a local package is rebuilt when a file changes, whatever its
    version says)."""

    name: str
    version: str
    local: str = ""


def _content_hash(path: Path) -> str:
    """sha256 over a file, or a directory's files (names and bytes; no VCS, caches or
    build output)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    skip = {".git", ".hg", ".svn", "__pycache__", ".venv", ".tox", "build", "dist", ".mypy_cache"}
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if any(part in skip or part.endswith(".egg-info") for part in rel.parts):
            continue
        if file.is_file():
            h.update(rel.as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


def _local_requirement_paths(requirements: Path) -> list[Path]:
    """Local paths a requirements file names (``./pkg``, ``-e ../lib``, ``file:`` URLs)."""
    out = []
    for line in requirements.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text.startswith(("-e ", "--editable ")):
            text = text.split(None, 1)[1].strip()
        if text.startswith("file:"):
            text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
        elif not text.startswith((".", "/", "~")):
            continue
        path = Path(text.split("[", 1)[0]).expanduser()  # relative: to the cwd, as pip does
        if path.exists():
            out.append(path)
    return out


def _dolambda_version() -> str:
    import dolambda

    return str(getattr(dolambda, "__version__", "0"))


def _no_wheel(failure: PipFailed, pins: dict[str, str], python: str, arch: str) -> str | None:
    """The deploy-time explanation when pip found no wheel for a pinned version."""
    text = "\n".join(failure.lines)
    for name, version in pins.items():
        pattern = (
            rf"(?i)no matching distribution found for {re.escape(name)}\s*==\s*{re.escape(version)}"
        )
        if not re.search(pattern, text):
            continue
        offered = re.search(
            rf"(?i)requirement {re.escape(name)}==\S+ \(from versions: ([^)]*)\)", text
        )
        versions = [v.strip() for v in offered.group(1).split(",")] if offered else []
        newest = next((v for v in reversed(versions) if v and v != "none"), None)
        tag = wheel_platforms(python, arch)[-1]
        choices = [
            f"run dolambda from a Python whose Lambda runtime has a wheel for {name} "
            f"{version} (python3.12 and later run on Amazon Linux 2023, glibc 2.34; "
            f"python{python} has glibc 2.{LAMBDA_GLIBC.get(python, 26)})",
        ]
        if newest:
            choices.append(
                f"install the newest {name} the runtime has here (`pip install "
                f"'{name}=={newest}'`), so both sides run the same one"
            )
        choices.append(
            f"pin another {name} for the function in the requirements file "
            f"(`{name}=={newest or '...'}` with `dolambda deploy --requirements FILE`); "
            "jobs then warn that the versions differ: pickled data and seeded random "
            "streams are only guaranteed with the same version on both sides"
        )
        return (
            f"{name} {version} (the version installed here) has no wheel for the Lambda "
            f"runtime python{python} on {arch} ({tag} or older): the function would "
            f"get another {name} than this client. Choices:\n  - " + "\n  - ".join(choices)
        )
    return None


def build_package(
    *,
    architecture: str = "x86_64",
    python: str | None = None,
    requirements: Path | None = None,
    dependencies: bool = True,
    target: Literal["lambda", "local"] = "lambda",
    cache: Path | None = None,
    unzipped_limit: int = UNZIPPED_LIMIT,
    rebuild: bool = False,
) -> Package:
    """Build (or reuse from the cache) the zip for ``python`` (default: ours) and ``architecture``.

    The cache key is what the build installs, not the text asking for it: pip resolves
    the requirements first (names to versions, local paths hashed by content), so an
    edited local package or a new release of an unpinned name builds a new zip;
    ``rebuild=True`` builds even when the key is cached. :data:`DATA_DISTRIBUTIONS`
    are pinned to the client's versions (:func:`data_pins`). ``target="local"``
    installs wheels for this machine instead of the Lambda platform (for tests);
    ``dependencies=False`` packages only dolambda's own files (fast; for tests that
    never run the code). Raises :class:`DeployError` with pip's reason when the
    requirements do not resolve for the platform (with the choices when the reason is
    a pinned version with no wheel), or listing the largest packages when the
    unzipped size exceeds Lambda's limit.
    """
    if architecture not in ARCHITECTURES:
        raise DeployError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    python = python or python_version()
    sources = _sources()
    reqs_text = Path(requirements).read_text() if requirements is not None else ""
    deps = worker_requirements() if dependencies else []
    # a boto3 or botocore the user's requirements pin is theirs: never replaced (nor
    # stripped); the other follows it (each boto3 release requires its own botocore)
    if _user_pinned(reqs_text) & set(BUNDLED_SDK):
        deps = [d for d in deps if requirement_name(d) not in BUNDLED_SDK]
    resolved: list[Resolved] = []
    pins: dict[str, str] = {}
    if deps or requirements is not None:
        resolved = _resolve(deps, requirements, python=python, arch=architecture, target=target)
        pins = data_pins({r.name: r.version for r in resolved}, reqs_text)
        if pins:
            deps = [d for d in deps if requirement_name(d) not in pins]
            deps += [f"{n}=={v}" for n, v in sorted(pins.items())]
            resolved = _resolve(
                deps, requirements, python=python, arch=architecture, target=target, pins=pins
            )
    h = hashlib.sha256()
    for part in (_BUILD_FORMAT, python, architecture, target, _dolambda_version(), *deps):
        h.update(part.encode() + b"\0")
    for r in resolved:
        h.update(f"{r.name}=={r.version}#{r.local}".encode() + b"\0")
    if requirements is not None:
        h.update(b"requirements\0" + reqs_text.encode() + b"\0")
        for local in _local_requirement_paths(Path(requirements)):
            h.update(b"local\0" + _content_hash(local).encode() + b"\0")
    h.update(b"init\0" + MINIMAL_INIT.encode() + b"\0")  # written, not among the sources
    for name, path in sorted(sources.items()):
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest = h.hexdigest()[:24]
    root = cache or cache_dir()
    path = root / f"lambda-py{python}-{architecture}-{target}-{digest}.zip"
    if path.exists() and not rebuild:
        return _describe(path, cached=True)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dolambda-build-") as tmp:
        tree = Path(tmp) / "package"
        tree.mkdir()
        if deps or requirements is not None:
            _pip_install(tree, deps, requirements, python=python, arch=architecture, target=target)
        for junk in [tree / "bin", *tree.glob("*.dist-info/direct_url.json")]:
            if junk.is_dir():
                shutil.rmtree(junk)  # console scripts: Lambda never runs them
        _write_sources(tree, sources)
        _compile(tree, python)
        record = package_record(
            tree, python=python, architecture=architecture, target=target, pins=pins
        )
        (tree / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _check_unzipped(tree, unzipped_limit)
        partial = path.with_suffix(f".{os.getpid()}.part")
        _zip_tree(tree, partial)
        os.replace(partial, path)
    return _describe(path, cached=False)


def _resolve(
    deps: list[str],
    requirements: Path | None,
    *,
    python: str,
    arch: str,
    target: str,
    pins: dict[str, str] | None = None,
) -> list[Resolved]:
    try:
        return resolve_requirements(deps, requirements, python=python, arch=arch, target=target)
    except PipFailed as failed:
        # pip's reason names a conflict when the file asks for the name too: ask for
        # each pin alone to tell "no wheel for this version" from a real conflict
        for name, version in sorted((pins or {}).items()):
            try:
                resolve_requirements(
                    [f"{name}=={version}"], None, python=python, arch=arch, target=target
                )
            except PipFailed as alone:
                explained = _no_wheel(alone, {name: version}, python, arch)
                if explained:
                    raise DeployError(explained) from None
        raise _pip_error(failed, requirements, python, arch, target) from None


def _compile(tree: Path, python: str) -> None:
    """Unchecked hash-based ``.pyc`` files (PEP 552) for this interpreter's version.

    A zip stores 1980 as every file's time, so timestamp pycs never match their source
    and a cold start would recompile numpy, pydantic and dill each time (Lambda's
    ``/var/task`` is read-only: the new pycs are never kept). Hash-based pycs do not
    look at the mtime; unchecked ones not even at the source. Only when ``python`` is
    this interpreter's version: another version's bytecode would be ignored anyway.
    """
    if python != python_version() or sys.implementation.name != "cpython":
        return
    compileall.compile_dir(
        tree,
        quiet=1,
        workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


def package_record(
    tree: Path, *, python: str, architecture: str, target: str, pins: dict[str, str]
) -> dict[str, object]:
    """What a built package holds (written as ``package.json`` inside it): the
    distributions found in the tree (``*.dist-info``), with their versions."""
    dists = {
        normalize(d.metadata["Name"]): d.version
        for d in metadata.distributions(path=[str(tree)])
        if d.metadata["Name"]
    }
    return {
        "format": RECORD_FORMAT,
        "python": python,
        "architecture": architecture,
        "platform": target,
        "dolambda": _dolambda_version(),
        "features": list(FEATURES),
        "distributions": dict(sorted(dists.items())),
        "pinned": dict(sorted(pins.items())),
    }


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
    sources = _sources()
    record = {
        "format": RECORD_FORMAT,
        "python": python_version(),
        "architecture": platform.machine(),
        "platform": "emulator",
        "implementation": sys.implementation.cache_tag,
        "dolambda": _dolambda_version(),
        "features": list(FEATURES),
        "distributions": dict(sorted(versions.items())),
        "pinned": {},
    }
    h = hashlib.sha256(json.dumps([_TASK_ROOT_FORMAT, record], sort_keys=True).encode())
    h.update(b"\0init\0" + MINIMAL_INIT.encode())  # written, not among the sources
    for name, path in sorted(sources.items()):
        h.update(b"\0" + name.encode() + b"\0" + path.read_bytes())
    root = cache or cache_dir()
    final = root / f"task-root-{sys.implementation.cache_tag}-{h.hexdigest()[:24]}"
    if (final / RECORD_NAME).is_file():
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
        (build / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(build, final)
        except OSError:  # another process built it first
            if not (final / RECORD_NAME).is_file():
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
    # --no-compile: pip's timestamp pycs would be stale in the zip; see _compile
    args = ["install", "--target", str(tree), "--quiet", "--no-compile"]
    args += _pip_options(python, arch, target) + deps
    if requirements is not None:
        args += ["-r", str(requirements)]
    try:
        _run_pip(args)
    except PipFailed as failed:
        raise _pip_error(failed, requirements, python, arch, target) from None


def _pip_error(
    failed: PipFailed, requirements: Path | None, python: str, arch: str, target: str
) -> DeployError:
    lines = failed.lines
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()] or lines
    reason = "\n  ".join(errors[-8:]) or f"pip exited with code {failed.returncode}"
    what = f"the requirements in {requirements}" if requirements else "dolambda's dependencies"
    where = (
        f"the Lambda platform ({wheel_platforms(python, arch)[-1]} or older, CPython {python}, "
        "binary wheels only)"
        if target == "lambda"
        else "this machine"
    )
    return DeployError(f"pip could not install {what} for {where}:\n  {reason}")


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
        try:
            record = json.loads(zf.read(RECORD_NAME))
        except KeyError:
            record = {}
    return Package(
        path=path,
        code_sha256=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        size=len(data),
        unzipped_size=unzipped,
        cached=cached,
        record=record,
    )


def ensure_package_record(s: DeploySettings, c: Clients, package: Package) -> Change:
    """Store what the deployed package holds where clients read it: the bucket
    (``<prefix>/deploy/<function>.package.json``, shared by every client) and
    ``packages.json`` next to this machine's client config (outlives the prefix's
    lifecycle rule). A package without a record (built by an older dolambda) is noted."""
    from dolambda._backends.lambda_ import code as _code
    from dolambda.deploy.aws import call
    from dolambda.deploy.settings import Change

    if not package.record:
        return Change("skipped", "package record", "the package has no package.json; rebuild it")
    key = _keys.package_record_key(s.clean_prefix, s.function_name)
    ident = _code.record_id(s.function_name, c.region, s.endpoint_url)
    where = f"package record s3://{s.bucket}/{key}"
    old = call("s3:GetObject", where, c.s3.get_object, missing=True, Bucket=s.bucket, Key=key)
    before = None
    if old is not None:
        with contextlib.suppress(ValueError):
            before = json.loads(old["Body"].read())
    body = json.dumps(package.record, indent=2, sort_keys=True).encode()
    dists = package.record.get("distributions", {})
    detail = f"{len(dists)} distributions, also in {_code.records_path()}"
    if before == package.record and _code.load_local_record(ident) == package.record:
        return Change("unchanged", where, detail)
    if before != package.record:
        call("s3:PutObject", where, c.s3.put_object, Bucket=s.bucket, Key=key, Body=body)
    _code.save_local_record(package.record, ident)
    return Change("created" if before is None else "updated", where, detail)
