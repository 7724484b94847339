"""The user's own code travels with the job: finder, archive and loader, on real files.

The worker side runs in a separate isolated interpreter (``python -I``: no current
directory, no user site, and ``PYTHONPATH`` is ignored), started in a directory
outside the user's sources, as on Lambda. dill (and numpy) come from the virtualenv's
site-packages, which ``-I`` keeps because ``site`` still runs; the checkout root is
put first on ``sys.path`` by the script itself, because the virtualenv's editable
install of dolambda may point at another checkout.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import pickletools
import py_compile
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dill
import numpy
import pytest

from dolambda._code.archive import build_archive, code_context, code_key
from dolambda._code.finder import PICKLED, CodeNeeds, find_code, pickled_modules
from dolambda._code.loader import install
from dolambda._errors import InvalidArgument, SerializationError, SignatureError
from dolambda._wire import codec

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Path]:
    """A directory of the user's sources, on ``sys.path`` for this test only."""
    root = tmp_path / "src"
    root.mkdir()
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if str(root) in str(getattr(module, "__file__", "") or ""):
                del sys.modules[name]
        importlib.invalidate_caches()


def run_isolated(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh ``python -I`` in a directory outside the sources."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    script = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ship(tmp_path: Path, needs: CodeNeeds, body: bytes) -> dict[str, str]:
    """Build the archive and write it and the pickled body where a worker reads them."""
    archive = build_archive(needs.local)
    (tmp_path / "code.zip").write_bytes(archive.data)
    (tmp_path / "body.pkl").write_bytes(body)
    return {
        "archive": str(tmp_path / "code.zip"),
        "digest": archive.digest,
        "cache": str(tmp_path / "cache"),
        "body": str(tmp_path / "body.pkl"),
    }


WORKER = """
    import pickle
    from dolambda._code.loader import install
    install({archive!r}, {digest!r}, {cache!r})
    fn = pickle.loads(open({body!r}, "rb").read())
    print(fn({arg!r}))
    print(type(fn).__module__, fn.__module__, sys.modules[fn.__module__].__file__)
"""

NO_LOADER = """
    import pickle
    pickle.loads(open({body!r}, "rb").read())
"""


PACKAGE = {
    "mysimpkg/__init__.py": "OFFSET = 1\n",
    "mysimpkg/core.py": """
        from pathlib import Path

        from . import OFFSET
        from .sub.helpers import scale


        def simulate(x):
            from .sub import late  # an import inside a function, relative

            factor = int((Path(__file__).parent / "data" / "factor.txt").read_text())
            return scale(x) * factor + OFFSET + late.BONUS
    """,
    "mysimpkg/sub/__init__.py": "",
    "mysimpkg/sub/helpers.py": """
        from .. import OFFSET


        def scale(x):
            return x * 10 * OFFSET
    """,
    "mysimpkg/sub/late.py": "BONUS = 100\n",
    "mysimpkg/data/factor.txt": "3",
}


def test_a_package_with_a_subpackage_travels_and_runs_in_an_isolated_worker(
    src: Path, tmp_path: Path
) -> None:
    write(src, PACKAGE)
    from mysimpkg.core import simulate  # type: ignore[import-not-found]

    assert simulate(3) == 191
    body = codec.dumps_body(simulate)
    needs = find_code(pickles=[body])
    assert needs.local_names == ("mysimpkg",)
    assert needs.local[0].path == src / "mysimpkg"
    assert needs.local[0].is_package
    assert needs.distributions == ()
    assert "pathlib" in needs.stdlib

    archive = build_archive(needs.local)
    assert archive.files == (
        "mysimpkg/__init__.py",
        "mysimpkg/core.py",
        "mysimpkg/data/factor.txt",
        "mysimpkg/sub/__init__.py",
        "mysimpkg/sub/helpers.py",
        "mysimpkg/sub/late.py",
    )  # no __pycache__, though the client imported it
    assert archive.modules == ("mysimpkg",)
    assert code_key("pre/", archive.digest) == f"pre/code/{archive.digest}.zip"
    assert code_key("", archive.digest) == f"code/{archive.digest}.zip"
    assert code_context(archive.digest) == f"code/{archive.digest}"

    paths = ship(tmp_path, needs, body)
    failed = run_isolated(tmp_path, NO_LOADER.format(**paths))
    assert failed.returncode != 0
    assert "ModuleNotFoundError: No module named 'mysimpkg'" in failed.stderr

    done = run_isolated(tmp_path, WORKER.format(arg=3, **paths))
    assert done.returncode == 0, done.stderr
    result, where = done.stdout.splitlines()
    assert result == "191"
    assert where.endswith(f"{paths['cache']}/{archive.digest}/mysimpkg/core.py")


def test_the_archive_is_deterministic(src: Path, tmp_path: Path) -> None:
    write(src, PACKAGE)
    importlib.import_module("mysimpkg.core")
    first = build_archive(find_code(force=["mysimpkg"]).local)
    copy = tmp_path / "copy"
    write(copy, PACKAGE)
    for file in copy.rglob("*"):
        os.utime(file, (1_000_000_000, 1_000_000_000))
    os.chmod(copy / "mysimpkg" / "core.py", 0o755)
    again = build_archive(find_code(force=[copy / "mysimpkg"]).local)
    assert again.data == first.data
    assert again.digest == first.digest


MODULES = {
    "mod_a.py": """
        import json
        from typing import TYPE_CHECKING

        import dolambda
        import numpy

        if TYPE_CHECKING:
            import pandas
        try:
            import scipy
        except ImportError:
            scipy = None


        def body(x):
            import mod_b

            return mod_b.twice(x) + len(json.dumps(x)) + int(numpy.int64(0))
    """,
    "mod_b.py": "from mod_c import ONE\n\ndef twice(x):\n    return 2 * x + ONE\n",
    "mod_c.py": "ONE = 1\n",
}


def test_local_modules_follow_their_imports_and_name_the_distributions(
    src: Path, tmp_path: Path
) -> None:
    write(src, MODULES)
    mod_a = importlib.import_module("mod_a")
    needs = find_code(objects=[mod_a.body])
    assert needs.local_names == ("mod_a", "mod_b", "mod_c")
    dists = {d.name: d for d in needs.distributions}
    assert dists["numpy"].version == numpy.__version__
    assert dists["numpy"].imports == ("numpy",)
    assert dists["numpy"].needed_by == ("mod_a",)
    assert not dists["numpy"].optional
    assert dists["scipy"].optional  # inside try/except ImportError
    assert "pandas" not in dists  # only under TYPE_CHECKING
    assert "dolambda" not in dists and "dolambda" not in needs.local_names
    assert {"json", "typing"} <= set(needs.stdlib)
    assert not set(needs.stdlib) & set(needs.local_names)

    paths = ship(tmp_path, needs, codec.dumps_body(mod_a.body))
    done = run_isolated(tmp_path, WORKER.format(arg=4, **paths))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "10"


def test_the_pickle_itself_names_distributions_and_missing_modules() -> None:
    needs = find_code(objects=[numpy.arange(3)])
    assert [(d.name, d.needed_by) for d in needs.distributions] == [("numpy", (PICKLED,))]
    ghost = b"cno_such_module_xyz\nthing\n."  # protocol 0 GLOBAL, never unpickled
    assert pickled_modules(ghost) == {"no_such_module_xyz"}
    assert find_code(pickles=[ghost]).missing == ("no_such_module_xyz",)


def test_stack_global_operands_are_followed_through_the_memo() -> None:
    import colorsys

    data = pickle.dumps(["colorsys", colorsys.rgb_to_hsv], protocol=4)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ops.count(("SHORT_BINUNICODE", "colorsys")) == 1  # the module name is a BINGET
    assert "colorsys" in pickled_modules(data)
    assert "json" in pickled_modules(dill.dumps(json))  # dill's _import_module("json")


def test_an_edited_file_gets_a_new_digest_and_a_warm_worker_runs_the_new_code(
    src: Path, tmp_path: Path
) -> None:
    write(src, {"warmmod.py": "def version(x):\n    return 'A'\n"})
    warmmod = importlib.import_module("warmmod")
    body = codec.dumps_body(warmmod.version)
    first = build_archive(find_code(pickles=[body]).local)
    assert build_archive(find_code(pickles=[body]).local).digest == first.digest
    write(src, {"warmmod.py": "def version(x):\n    return 'B'\n"})
    second = build_archive(find_code(pickles=[body]).local)
    assert second.digest != first.digest
    (tmp_path / "a.zip").write_bytes(first.data)
    (tmp_path / "b.zip").write_bytes(second.data)
    (tmp_path / "body.pkl").write_bytes(body)

    done = run_isolated(
        tmp_path,
        f"""
        import pickle
        from dolambda._code.loader import install
        cache, body = {str(tmp_path / "cache")!r}, open({str(tmp_path / "body.pkl")!r}, "rb").read()
        seen = []
        for archive, digest in [("a.zip", {first.digest!r}), ("b.zip", {second.digest!r}),
                                ("a.zip", {first.digest!r}), ("gone.zip", {second.digest!r}),
                                ("gone.zip", {second.digest!r})]:
            install({str(tmp_path)!r} + "/" + archive, digest, cache)
            seen.append(pickle.loads(body)(0))
            assert sum(cache in p for p in sys.path) == 1, sys.path
        print("".join(seen))
        """,
    )
    assert done.returncode == 0, done.stderr
    # a digest extracted once is reused without its archive ("gone.zip" never existed)
    assert done.stdout.strip() == "ABABB"


PLUGINS = {
    "plugin_host.py": """
        import importlib


        def run(x):
            return importlib.import_module("plugin_" + "impl").value(x)


        def unused():
            import excl_mod
    """,
    "plugin_impl.py": "def value(x):\n    return x + 5\n",
    "excl_mod.py": "X = 1\n",
}


def test_force_ships_what_detection_misses_and_exclude_keeps_a_module_out(
    src: Path, tmp_path: Path
) -> None:
    write(src, PLUGINS)
    host = importlib.import_module("plugin_host")
    body = codec.dumps_body(host.run)
    assert find_code(pickles=[body]).local_names == ("excl_mod", "plugin_host")

    needs = find_code(pickles=[body], force=["plugin_impl"], exclude=["excl_mod"])
    assert needs.local_names == ("plugin_host", "plugin_impl")
    assert needs.excluded == ("excl_mod",)
    assert [m.forced for m in needs.local] == [False, True]
    by_path = find_code(pickles=[body], force=[src / "plugin_impl.py"], exclude="excl_mod")
    assert by_path.local_names == needs.local_names
    impl = importlib.import_module("plugin_impl")
    assert find_code(pickles=[body], force=impl, exclude=["excl_mod"]).local == needs.local

    paths = ship(tmp_path, needs, body)
    done = run_isolated(tmp_path, WORKER.format(arg=1, **paths))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "6"
    without = ship(tmp_path, find_code(pickles=[body], exclude=["excl_mod"]), body)
    failed = run_isolated(tmp_path, WORKER.format(arg=1, **without))
    assert "No module named 'plugin_impl'" in failed.stderr


def test_a_forced_directory_is_scanned_whole(tmp_path: Path) -> None:
    write(
        tmp_path / "other",
        {"forcedpkg/__init__.py": "", "forcedpkg/x.py": "import numpy\nfrom . import y\n"},
    )
    needs = find_code(force=[tmp_path / "other" / "forcedpkg"])
    assert needs.local_names == ("forcedpkg",)
    assert needs.local[0].forced
    assert [(d.name, d.needed_by) for d in needs.distributions] == [("numpy", ("forcedpkg.x",))]


def test_bad_force_and_exclude_arguments_are_refused(src: Path) -> None:
    write(src, {"both_mod.py": ""})
    with pytest.raises(InvalidArgument, match="both forced and excluded"):
        find_code(force=["both_mod"], exclude=["both_mod"])
    with pytest.raises(InvalidArgument, match="standard library"):
        find_code(force=["json"])
    with pytest.raises(InvalidArgument, match="no module 'nowhere_xyz'"):
        find_code(force=["nowhere_xyz"])
    with pytest.raises(InvalidArgument, match="top-level"):
        find_code(exclude=["pkg.sub"])


def test_a_compiled_extension_in_a_local_package_is_a_clear_error(src: Path) -> None:
    write(src, {"extpkg/__init__.py": "def f(x):\n    return x\n"})
    (src / "extpkg" / "_speed.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    extpkg = importlib.import_module("extpkg")
    needs = find_code(objects=[extpkg.f])
    with pytest.raises(SerializationError, match=r"'extpkg'.*_speed\.cpython.*--requirements"):
        build_archive(needs.local)


def test_an_archive_over_the_size_limit_names_the_largest_files(src: Path) -> None:
    write(src, {"bigpkg/__init__.py": "def f(x):\n    return x\n"})
    (src / "bigpkg" / "blob.bin").write_bytes(b"\0" * 5000)
    bigpkg = importlib.import_module("bigpkg")
    needs = find_code(objects=[bigpkg.f])
    assert build_archive(needs.local, size_limit=10_000).size > 5000
    with pytest.raises(SerializationError, match=r"over the 4096 bytes limit.*bigpkg/blob\.bin"):
        build_archive(needs.local, size_limit=4096)


def test_a_module_without_source_is_a_clear_error(src: Path) -> None:
    write(src, {"legacy_mod.py": "def f(x):\n    return x\n"})
    py_compile.compile(str(src / "legacy_mod.py"), cfile=str(src / "legacy_mod.pyc"))
    (src / "legacy_mod.py").unlink()
    importlib.invalidate_caches()
    legacy = importlib.import_module("legacy_mod")
    assert legacy.__file__.endswith(".pyc")
    needs = find_code(objects=[legacy.f])
    assert needs.local_names == ("legacy_mod",)
    with pytest.raises(SerializationError, match=r"'legacy_mod'.*bytecode"):
        build_archive(needs.local)


def test_the_loader_refuses_bytes_that_do_not_match_their_digest(src: Path, tmp_path: Path) -> None:
    write(src, {"tamper_mod.py": "X = 1\n"})
    archive = build_archive(find_code(force=["tamper_mod"]).local)
    with pytest.raises(SignatureError, match="altered or truncated"):
        install(archive.data + b"x", archive.digest, tmp_path / "cache")
    assert not (tmp_path / "cache" / archive.digest).exists()
    with pytest.raises(InvalidArgument):
        install(archive.data, "../../etc", tmp_path / "cache")
