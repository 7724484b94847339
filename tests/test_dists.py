"""What the deployed package holds, recorded by deploy and checked by the client.

The emulator's workers run the function's package: a body that
imports a distribution installed here but absent from that package fails on AWS on
every iteration; here it is one ConfigError before anything is dispatched. The
package's own record (``package.json``) is what the client checks against.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import boto3
import pytest

import dolambda.deploy as dep
from dolambda import ConfigError, LambdaBackend, foreach
from dolambda._backends.lambda_ import code as lambda_code
from dolambda._code.archive import build_archive
from dolambda._code.distributions import FunctionPackage, check_distributions
from dolambda._code.finder import find_code
from dolambda._wire import keys
from dolambda.deploy import package
from dolambda.deploy.settings import DeploySettings
from dolambda.emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "src"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    try:
        yield root
    finally:
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(root)):
                del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture(scope="module")
def isolated(moto_url: str) -> Iterator[Emulator]:
    """One isolated Lambda environment running the function's package."""
    name = f"dists-{uuid.uuid4().hex[:10]}"
    with Emulator(
        workers=1, timeout=30, endpoint_url=moto_url, bucket=name, function_name=name
    ) as emu:
        yield emu


def s3(emu: Emulator) -> object:
    return boto3.client("s3", endpoint_url=emu.endpoint_url, region_name=emu.region)


# ------------------------------------------------------------------ item 1: the record


def test_a_distribution_the_package_lacks_is_one_error_before_dispatch(
    isolated: Emulator, src: Path
) -> None:
    """hypothesis is installed here (the dev venv), not in the function's package."""
    mod = unique("usehyp")
    write(src, {f"{mod}.py": "import hypothesis\n\ndef body(x):\n    return x + 1\n"})
    body = importlib.import_module(mod).body
    backend = LambdaBackend(**isolated.backend_settings())
    before = isolated.stats
    with pytest.raises(ConfigError) as info:
        foreach(x=range(50)).errorhandling("pass").do_lambda(body, backend=backend, progress=False)
    text = str(info.value)
    assert "import hypothesis (distribution hypothesis " + version("hypothesis") in text
    assert f"module {mod}" in text
    assert f"hypothesis=={version('hypothesis')}" in text
    assert "dolambda deploy --requirements FILE" in text
    assert keys.package_record_key(isolated.prefix, isolated.function_name) in text
    after = isolated.stats
    assert (after.events, after.invocations) == (before.events, before.invocations)
    listed = s3(isolated).list_objects_v2(  # type: ignore[attr-defined]
        Bucket=isolated.bucket, Prefix=keys.queue_root(isolated.prefix)
    )
    assert listed.get("KeyCount", 0) == 0

    # what the package does hold runs (numpy from the package, not the client's venv)
    mod2 = unique("usenp")
    write(src, {f"{mod2}.py": "import numpy\n\ndef body(x):\n    return int(numpy.int64(x) * 2)\n"})
    body2 = importlib.import_module(mod2).body
    assert foreach(x=range(4)).do_lambda(body2, backend=backend, progress=False) == [0, 2, 4, 6]


def test_a_data_distribution_of_another_version_warns_once_naming_both(
    isolated: Emulator, src: Path
) -> None:
    client = s3(isolated)
    key = keys.package_record_key(isolated.prefix, isolated.function_name)
    real = client.get_object(Bucket=isolated.bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    record = json.loads(real)
    assert record["distributions"]["numpy"] == version("numpy")  # the emulator's own record
    record["distributions"]["numpy"] = "1.0.0"
    client.put_object(Bucket=isolated.bucket, Key=key, Body=json.dumps(record))  # type: ignore[attr-defined]
    try:
        mod = unique("npver")
        write(src, {f"{mod}.py": "import numpy as np\n\ndef body(x):\n    return x\n"})
        body = importlib.import_module(mod).body
        backend = LambdaBackend(**isolated.backend_settings())
        with pytest.warns(RuntimeWarning) as caught:
            assert foreach(x=range(3)).do_lambda(body, backend=backend, progress=False) == [0, 1, 2]
        texts = [str(w.message) for w in caught if "numpy" in str(w.message)]
        assert len(texts) == 1
        assert f"numpy 1.0.0 and this client {version('numpy')}" in texts[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the second job is quiet
            assert foreach(x=range(2)).do_lambda(body, backend=backend, progress=False) == [0, 1]
    finally:
        client.put_object(Bucket=isolated.bucket, Key=key, Body=real)  # type: ignore[attr-defined]


def test_optional_imports_and_held_distributions_pass_the_check(src: Path) -> None:
    mod = unique("opt")
    write(
        src,
        {
            f"{mod}.py": """
                import numpy
                try:
                    import hypothesis
                except ImportError:
                    hypothesis = None

                def body(x):
                    return x
            """
        },
    )
    needs = find_code(objects=[importlib.import_module(mod).body])
    held = FunctionPackage("f", {"numpy": version("numpy")}, "test")
    assert check_distributions(needs, held) == []
    lacking = FunctionPackage("f", {}, "test")
    with pytest.raises(ConfigError, match=r"1 distribution\(s\) the function 'f' does not have"):
        check_distributions(needs, lacking)

    # a seeded job's streams come from the worker's numpy, even when the body has none
    plain = find_code(objects=[len])
    other = FunctionPackage("f", {"numpy": "1.0.0"}, "test")
    assert check_distributions(plain, other) == []
    (said,) = check_distributions(plain, other, seeded=True)
    assert f"has numpy 1.0.0 and this client {version('numpy')}" in said

    # imported only inside a function: it fails only if called, so a warning, not an error
    lazy = unique("lazy")
    write(src, {f"{lazy}.py": "def body(x):\n    return x\n\ndef plot():\n    import hypothesis\n"})
    needs = find_code(objects=[importlib.import_module(lazy).body])
    (said,) = check_distributions(needs, lacking)
    assert "does not have hypothesis (imported inside a function of module" in said


def test_the_packages_own_boto3_comes_first_in_the_isolated_worker(
    isolated: Emulator, src: Path
) -> None:
    mod = unique("b3")
    write(
        src,
        {
            f"{mod}.py": """
                def where(x):
                    import os, boto3, botocore
                    return boto3.__file__, botocore.__version__, os.environ["LAMBDA_TASK_ROOT"]
            """
        },
    )
    where = importlib.import_module(mod).where
    backend = LambdaBackend(**isolated.backend_settings())
    ((file, botocore, root),) = foreach(x=[0]).do_lambda(where, backend=backend, progress=False)
    assert file.startswith(root + "/boto3/"), (file, root)
    assert botocore == version("botocore")


def test_deploy_records_the_package_in_the_bucket_and_next_to_the_config(
    moto_url: str, src: Path, tmp_path: Path
) -> None:
    name = f"rec-{uuid.uuid4().hex[:10]}"
    settings = DeploySettings(bucket=name, function_name=name, endpoint_url=moto_url)
    pkg = dep.build_package(dependencies=False, cache=tmp_path / "cache")
    assert pkg.record["format"] == package.RECORD_FORMAT
    assert pkg.record["distributions"] == {}  # dolambda's own files only
    with zipfile.ZipFile(pkg.path) as zf:
        assert json.loads(zf.read("package.json")) == pkg.record
    changes = dep.deploy(settings, package=pkg)
    assert any("package record" in str(c) for c in changes)
    key = keys.package_record_key(settings.clean_prefix, name)
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    assert json.loads(client.get_object(Bucket=name, Key=key)["Body"].read()) == pkg.record
    ident = lambda_code.record_id(name, "us-east-1", moto_url)
    assert lambda_code.load_local_record(ident) == pkg.record

    mod = unique("needsnp")
    write(src, {f"{mod}.py": "import numpy\n\ndef body(x):\n    return x\n"})
    body = importlib.import_module(mod).body
    kw = {"bucket": name, "function_name": name, "endpoint_url": moto_url}
    with pytest.raises(ConfigError, match=rf"numpy.*{key}"):
        foreach(x=range(3)).do_lambda(body, backend=LambdaBackend(**kw), progress=False)
    # the bucket's copy expired (the prefix's lifecycle rule): this machine's copy answers
    client.delete_object(Bucket=name, Key=key)
    with pytest.raises(ConfigError, match=r"numpy.*packages\.json"):
        foreach(x=range(3)).do_lambda(body, backend=LambdaBackend(**kw), progress=False)


# ------------------------------------------------------------------ item 6: the loader


LOADER = """
    import importlib, pathlib, sys
    sys.path.insert(0, {root!r})
    from dolambda._core.execute import install_code

    class Manifest:  # what install_code reads of a job's manifest
        def __init__(self, *code):
            self.code, self.job_id = code, "j"

    fetched = []

    def fetch(digest):
        fetched.append(digest)
        return pathlib.Path({sealed!r}, digest).read_bytes()

    def run(*code):
        install_code(Manifest(*code), key={key!r}, fetch_code=fetch)

    def who(name):
        try:
            return importlib.import_module(name).WHO
        except ModuleNotFoundError as exc:
            return "missing " + exc.name

    run({a!r})  # job A ships module a
    print(who({a_mod!r}))
    run({b!r})  # job B, on the same warm worker, ships only module b
    print(who({b_mod!r}), who({a_mod!r}))
    print({a_mod!r} in sys.modules, any({a!r} in p for p in sys.path))
    run({a!r}, {b!r})  # a job listing both: both, from the worker's cache
    print(who({a_mod!r}), who({b_mod!r}), len(fetched))
    run()  # a job that ships nothing
    print(who({a_mod!r}), who({b_mod!r}))
"""


def test_a_warm_worker_forgets_archives_the_next_job_does_not_list(
    src: Path, tmp_path: Path
) -> None:
    from dolambda._code.archive import seal_archive

    a_mod, b_mod = unique("joba"), unique("jobb")
    write(src, {f"{a_mod}.py": "WHO = 'a'\n", f"{b_mod}.py": "WHO = 'b'\n"})
    key = b"k" * 32
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    digests = {}
    for mod in (a_mod, b_mod):
        archive = build_archive(find_code(force=[mod]).local)
        (sealed / archive.digest).write_bytes(seal_archive(archive, key=key))
        digests[mod] = archive.digest
    code = LOADER.format(
        root=str(ROOT),
        sealed=str(sealed),
        key=key,
        a=digests[a_mod],
        b=digests[b_mod],
        a_mod=a_mod,
        b_mod=b_mod,
    )
    (tmp_path / "tmp").mkdir()
    out = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env={"TMPDIR": str(tmp_path / "tmp"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "a",
        f"b missing {a_mod}",
        "False False",
        "a b 2",
        f"missing {a_mod} missing {b_mod}",
    ]


# ------------------------------------------------------------------ items 14.8, 15.11: the build


def make_wheel(where: Path, name: str, version: str, payload: str = "") -> Path:
    """A pure-Python wheel written by hand (a wheel is a zip with a dist-info)."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n{payload}",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(n, text)
    return path


def test_the_build_cache_follows_what_the_requirements_resolve_to(tmp_path: Path) -> None:
    """pip runs for real, offline: a local wheel directory and a local wheel file."""
    index = tmp_path / "index"
    make_wheel(index, "tinydist", "1.0")
    local = make_wheel(tmp_path / "mine", "minedist", "0.1", "X = 1\n")
    req = tmp_path / "requirements.txt"
    req.write_text(f"--no-index\n--find-links {index}\ntinydist\n{local}\n")
    cache = tmp_path / "cache"

    def build(**kw: bool) -> package.Package:
        return package.build_package(
            target="local", dependencies=False, requirements=req, cache=cache, **kw
        )

    first = build()
    assert not first.cached
    assert first.record["distributions"] == {"minedist": "0.1", "tinydist": "1.0"}
    assert build().cached  # the same resolution
    assert not build(rebuild=True).cached  # --rebuild

    make_wheel(index, "tinydist", "1.1")  # a new release of an unpinned name
    newer = build()
    assert not newer.cached and newer.path != first.path
    assert newer.record["distributions"]["tinydist"] == "1.1"

    make_wheel(tmp_path / "mine", "minedist", "0.1", "X = 2\n")  # edited, same version
    edited = build()
    assert not edited.cached and edited.path != newer.path
    with zipfile.ZipFile(edited.path) as zf:
        assert b"X = 2" in zf.read("minedist/__init__.py")
    assert build().cached


PIP_NO_WHEEL = [
    "ERROR: Could not find a version that satisfies the requirement numpy==9.9.9 (from "
    "versions: 1.26.4, 2.0.2, 2.2.5, 2.2.6)",
    "ERROR: No matching distribution found for numpy==9.9.9",
]
PIP_WITH_THE_REST = [  # what pip 26 says when requirements.txt also names numpy
    "ERROR: Cannot install numpy and numpy==9.9.9 because these package versions have "
    "conflicting dependencies.",
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/...",
]


def test_a_data_distribution_without_a_wheel_for_the_clients_version_names_the_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolver seam: the client has numpy 9.9.9, the platform's newest is 2.2.6."""
    asked: list[list[str]] = []

    def resolve(reqs: list[str], requirements: Path | None, **kw: str) -> list[package.Resolved]:
        asked.append(reqs)
        if reqs == ["numpy==9.9.9"]:  # asked alone: pip says there is no such wheel
            raise package.PipFailed(PIP_NO_WHEEL, 1)
        if "numpy==9.9.9" in reqs:  # with the rest: pip's reason is less direct
            raise package.PipFailed(PIP_WITH_THE_REST, 1)
        return [package.Resolved("dill", version("dill")), package.Resolved("numpy", "2.2.6")]

    real = package._version
    monkeypatch.setattr(package, "_version", lambda d: "9.9.9" if d == "numpy" else real(d))
    monkeypatch.setattr(package, "resolve_requirements", resolve)
    with pytest.raises(dep.DeployError) as info:
        package.build_package(python="3.11", cache=tmp_path)
    text = str(info.value)
    assert "numpy 9.9.9 (the version installed here) has no wheel for the Lambda runtime " in text
    assert "python3.11 on x86_64 (manylinux_2_26_x86_64 or older)" in text
    assert "python3.12 and later" in text  # another runtime
    assert "pip install 'numpy==2.2.6'" in text  # another version here
    assert "`numpy==2.2.6` with `dolambda deploy --requirements FILE`" in text
    assert "numpy" in asked[0] and "numpy==9.9.9" in asked[1] and "numpy" not in asked[1]
    assert asked[2] == ["numpy==9.9.9"]

    # the user's own pin wins: no pin, so no failure for it (and no second resolve)
    req = tmp_path / "requirements.txt"
    req.write_text("numpy==2.2.6\n")
    assert package.data_pins({"numpy": "2.2.6"}, req.read_text()) == {}
    assert package.data_pins({"numpy": "2.2.6"}, "numpy\n") == {"numpy": "9.9.9"}
    assert package.data_pins({"numpy": "9.9.9"}, "") == {}


def test_a_boto3_the_user_pins_is_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def resolve(reqs: list[str], requirements: Path | None, **kw: str) -> list[package.Resolved]:
        asked.append(reqs)
        raise package.PipFailed(["ERROR: stop here"], 1)

    monkeypatch.setattr(package, "resolve_requirements", resolve)
    with pytest.raises(dep.DeployError, match="stop here"):
        package.build_package(cache=tmp_path)
    assert f"boto3=={version('boto3')}" in asked[-1]  # bundled at the client's version
    assert f"botocore=={version('botocore')}" in asked[-1]
    req = tmp_path / "requirements.txt"
    req.write_text("boto3==1.35.99  # mine\n")
    with pytest.raises(dep.DeployError, match="stop here"):
        package.build_package(requirements=req, cache=tmp_path)
    assert not any(r.startswith(("boto3", "botocore")) for r in asked[-1])  # pip picks it
