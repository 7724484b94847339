"""Which modules a job needs, and where each of them comes from (client side).

Two sources of truth, followed to a fixed point:

1. **The pickles.** Unpickling imports exactly the modules named by ``GLOBAL``,
   ``STACK_GLOBAL`` and ``INST`` (for ``STACK_GLOBAL`` the two strings pushed before
   it, also when they come from the memo), plus the modules dill itself restores by
   name (``dill._dill._import_module("mod")``). :func:`pickled_modules` walks the
   opcodes with a small model of the unpickler's stack and memo; nothing is unpickled.
2. **The local sources.** A module that is the user's own (importable here, but from
   no installed distribution) is parsed with :mod:`ast` and its imports (``import x``,
   ``from x import y``, relative imports, imports inside functions) are followed
   recursively, so a local module importing another local module ships both, and a
   local module importing an installed distribution reports that distribution.
   Imports under ``if TYPE_CHECKING:`` are skipped; imports inside a ``try`` that
   catches ``ImportError`` are marked optional, and imports inside a function or lambda
   lazy (they run only if it is called).

Each top-level name is classified as an :class:`Origin`. The unit of shipping is the
top-level package (its whole directory) or the single module file; ``__main__`` is
never shipped (dill pickles its objects by value). The user's ``force`` list is
always shipped (module names, module objects, or paths of a module file or package
directory; a forced package's every module is scanned), the ``exclude`` list never
(nor scanned, nor reported as a needed distribution): both win over detection.
"""

from __future__ import annotations

import ast
import copyreg
import enum
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import pickletools
import sys
import threading
import zipimport
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dolambda._errors import InvalidArgument, SerializationError
from dolambda._wire import codec

#: CPython 3.11's ast.parse is not safe from two threads at once (two jobs submitted
#: together scan their code on two threads): "SystemError: AST constructor recursion depth
#: mismatch" (python/cpython#106905)
_PARSING = threading.Lock()

PICKLED = "<pickle>"
"""The ``needed_by`` entry for a module that a pickle references directly."""

ForceItem = str | os.PathLike[str] | ModuleType


class Origin(enum.StrEnum):
    """Where a top-level module comes from, as seen from the client."""

    MAIN = "main"  # __main__: pickled by value, never shipped
    BUILTIN = "builtin"  # compiled into the interpreter
    STDLIB = "stdlib"  # sys.stdlib_module_names
    DOLAMBDA = "dolambda"  # dolambda itself: the function has it
    DISTRIBUTION = "distribution"  # from an installed distribution: the function must have it
    LOCAL = "local"  # the user's own module or package: shipped
    MISSING = "missing"  # not importable here


@dataclass(frozen=True)
class LocalModule:
    """A top-level module or package that ships as source."""

    name: str  # the top-level import name, e.g. "mysim"
    path: Path  # the module file, or the package directory
    is_package: bool
    forced: bool = False
    problem: str = ""  # why its source cannot be shipped ("" when it can)


@dataclass(frozen=True)
class NeededDistribution:
    """An installed distribution the job imports; the function must hold it."""

    name: str  # the distribution's name, e.g. "scikit-learn"
    version: str  # the version installed here
    imports: tuple[str, ...]  # the top-level import names that need it, e.g. ("sklearn",)
    needed_by: tuple[str, ...]  # local modules importing it, or PICKLED
    optional: bool  # every import of it sits in a try/except ImportError
    lazy: bool = False  # every import of it is inside a function (runs only if called)


@dataclass(frozen=True)
class CodeNeeds:
    """What a job needs beyond the pickles themselves."""

    local: tuple[LocalModule, ...]  # what ships, sorted by name
    distributions: tuple[NeededDistribution, ...]  # sorted by name
    stdlib: tuple[str, ...]  # standard-library and builtin top-level names seen
    missing: tuple[str, ...]  # non-optional imports in local sources not importable here
    excluded: tuple[str, ...]  # names detection found that the user kept out

    @property
    def local_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.local)


# --------------------------------------------------------------------------- pickles


class _Mark:
    pass


_MARK = _Mark()


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


_STRING_OPS = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_TUPLE_N = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_DILL_IMPORT = _Global("dill._dill", "_import_module")


def pickled_modules(data: bytes) -> frozenset[str]:
    """The dotted names of every module that unpickling ``data`` imports."""
    found: set[str] = set()
    stack: list[Any] = []
    memo: dict[object, Any] = {}

    def pop(n: int) -> list[Any]:
        start = max(0, len(stack) - n)
        taken = stack[start:]
        del stack[start:]
        return taken

    def pop_pair() -> tuple[Any, Any]:
        padded = [None, None, *pop(2)]  # a short stack lacks the deeper item
        return padded[-2], padded[-1]

    def pop_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                taken = stack[i + 1 :]
                del stack[i:]
                return taken
        stack.clear()
        return []

    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in _STRING_OPS:
            stack.append(arg if isinstance(arg, str) else None)
        elif name in _GET_OPS:
            stack.append(memo.get(arg))
        elif name in _PUT_OPS:
            memo[arg] = stack[-1] if stack else None
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.add(module)
            if name == "INST":
                pop_mark()
            stack.append(_Global(module, qualname))
        elif name == "STACK_GLOBAL":
            module, qualname = pop_pair()
            if isinstance(module, str):
                found.add(module)
            stack.append(_Global(str(module), str(qualname)))
        elif name in ("EXT1", "EXT2", "EXT4"):
            ref = copyreg._inverted_registry.get(arg)  # type: ignore[attr-defined]
            if ref is not None:
                found.add(ref[0])
            stack.append(_Global(*ref) if ref is not None else None)
        elif name in _TUPLE_N:
            stack.append(tuple(pop(_TUPLE_N[name])))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "REDUCE":
            func, args = pop_pair()
            if func == _DILL_IMPORT and isinstance(args, tuple) and args:
                found.add(args[0] if isinstance(args[0], str) else "")
            stack.append(None)
        elif name == "MARK":
            stack.append(_MARK)
        else:
            _generic(op, stack, pop, pop_mark)
    return frozenset(m for m in found if m)


def _generic(op: pickletools.OpcodeInfo, stack: list[Any], pop: Any, pop_mark: Any) -> None:
    """Apply an opcode's stack effect with unknown values (what we do not model)."""
    before = op.stack_before
    if pickletools.markobject in before:
        pop_mark()
        pop(before.index(pickletools.markobject))
    else:
        pop(len(before))
    stack.extend([None] * len(op.stack_after))


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceImport:
    """One import found in a module's source."""

    module: str  # absolute dotted name
    maybe_submodule: bool  # from X import name: X.name may be a module or an attribute
    optional: bool
    lazy: bool = False  # inside a function or lambda: runs only when it is called


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for handler in node.handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for t in types:
            if isinstance(t, ast.Name) and t.id in names:
                return True
    return False


def _parse(source: bytes | str) -> ast.Module:
    """``ast.parse`` under :data:`_PARSING`; the lock does not keep out AST work on other
    threads outside the finder, so the 3.11 SystemError ("AST constructor recursion depth
    mismatch", python/cpython#106905) is retried: the source is fine, the state was not."""
    for attempt in range(3):
        try:
            with _PARSING:
                return ast.parse(source)
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def source_imports(source: bytes | str, module: str, *, is_package: bool) -> list[SourceImport]:
    """The imports in one module's source, as absolute dotted names (relative imports
    resolved against ``module``). Raises SyntaxError when the source does not parse."""
    tree = _parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[SourceImport] = []

    def visit(node: ast.AST, optional: bool, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.orelse:
                visit(stmt, optional, lazy)
            return
        if isinstance(node, ast.Try):
            inner = optional or _catches_import_error(node)
            for stmt in node.body:
                visit(stmt, inner, lazy)
            for part in (node.handlers, node.orelse, node.finalbody):
                for sub in part:
                    visit(sub, optional, lazy)
            return
        if isinstance(node, ast.Import):
            found.extend(SourceImport(alias.name, False, optional, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, package)
            if base:
                found.append(SourceImport(base, False, optional, lazy))
                found.extend(
                    SourceImport(f"{base}.{alias.name}", True, optional, lazy)
                    for alias in node.names
                    if alias.name != "*"
                )
        inner_lazy = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, optional, inner_lazy)

    visit(tree, False, False)
    return found


def _resolve_from(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".") if package else []
    if node.level - 1 > len(parts) or (node.level - 1 == len(parts) and not node.module):
        return ""  # beyond the top-level package: an ImportError when it runs
    base = parts[: len(parts) - (node.level - 1)]
    if node.module:
        base.append(node.module)
    return ".".join(base)


# --------------------------------------------------------------------------- origins


def _spec(top: str) -> importlib.machinery.ModuleSpec | None:
    module = sys.modules.get(top)
    if module is not None:
        spec = module.__spec__
        if spec is not None:
            return spec
        file = module.__file__
        if file:
            return importlib.util.spec_from_file_location(top, file)
        return None
    try:
        return importlib.machinery.PathFinder.find_spec(top)
    except (ImportError, ValueError):
        return None


def _local_module(top: str, spec: importlib.machinery.ModuleSpec, forced: bool) -> LocalModule:
    """Where a local module's source lives, and why it cannot ship if it cannot."""
    loader = spec.loader
    locations = list(spec.submodule_search_locations or [])
    origin = spec.origin if spec.has_location else None
    is_package = spec.submodule_search_locations is not None
    problem = ""
    if isinstance(loader, zipimport.zipimporter):
        problem = f"it is imported from a zip archive ({spec.origin}), not from source files"
    elif spec.origin == "frozen" or isinstance(loader, type):
        problem = "it is a frozen or built-in module, with no source file"
    if is_package:
        if origin:
            path = Path(origin).parent
        elif len(locations) == 1:
            path = Path(locations[0])  # a namespace package in one directory
        else:
            path = Path(locations[0]) if locations else Path()
            problem = problem or (
                f"it is a namespace package spread over {len(locations)} directories "
                f"({', '.join(locations)}); ship one of them by path"
            )
    else:
        path = Path(origin or "")
        if isinstance(loader, importlib.machinery.SourcelessFileLoader):
            problem = problem or f"only its compiled bytecode {path.name} exists, no .py source"
        elif isinstance(loader, importlib.machinery.ExtensionFileLoader):
            problem = problem or f"it is a compiled extension ({path.name})"
        elif not origin:
            problem = problem or "it has no source file"
    return LocalModule(top, path, is_package, forced, problem)


@dataclass
class _Finder:
    distributions_by_module: dict[str, list[str]]
    exclude: frozenset[str]
    origins: dict[str, Origin] = field(default_factory=dict)
    local: dict[str, LocalModule] = field(default_factory=dict)
    # top -> its users: (module, optional, lazy)
    needed: dict[str, list[tuple[str, bool, bool]]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    scanned: set[Path] = field(default_factory=set)

    def origin(self, top: str) -> Origin:
        if top not in self.origins:
            self.origins[top] = self._classify(top)
        return self.origins[top]

    def _classify(self, top: str) -> Origin:
        if top in ("__main__", "__mp_main__"):
            return Origin.MAIN
        if top in sys.builtin_module_names:
            return Origin.BUILTIN
        if top in sys.stdlib_module_names:
            return Origin.STDLIB
        if top == "dolambda":
            return Origin.DOLAMBDA
        if top in self.distributions_by_module:
            return Origin.DISTRIBUTION
        spec = _spec(top)
        if spec is None:
            return Origin.MISSING
        if top not in self.local:
            self.local[top] = _local_module(top, spec, forced=False)
        return Origin.LOCAL

    def need(
        self, dotted: str, by: str, optional: bool, queue: list[str], lazy: bool = False
    ) -> None:
        """Record that ``by`` imports ``dotted``; queue local modules for scanning."""
        top = dotted.partition(".")[0]
        if not top.isidentifier():
            return
        if top in self.exclude:
            self.excluded.add(top)
            return
        origin = self.origin(top)
        if origin is Origin.DISTRIBUTION:
            self.needed.setdefault(top, []).append((by, optional, lazy))
        elif origin is Origin.MISSING and not optional:
            self.missing.add(dotted)
        elif origin is Origin.LOCAL:
            queue.append(dotted)

    def scan(self, queue: list[str]) -> None:
        """Follow the imports of queued local modules, recursively."""
        while queue:
            dotted = queue.pop()
            top = dotted.partition(".")[0]
            local = self.local[top]
            if local.problem:
                continue
            if local.forced:
                files = list(_module_files(local))
            else:
                files = [f for f in _files_for(local, dotted) if f[1] not in self.scanned]
            for module, file, is_package in files:
                if file in self.scanned:
                    continue
                self.scanned.add(file)
                try:
                    imports = source_imports(file.read_bytes(), module, is_package=is_package)
                except (OSError, SyntaxError, ValueError):
                    continue  # never importable as it stands; the archive still ships it
                for imp in imports:
                    if imp.maybe_submodule and not self._is_local_submodule(imp.module):
                        continue
                    self.need(imp.module, module, imp.optional, queue, imp.lazy)

    def _is_local_submodule(self, dotted: str) -> bool:
        top = dotted.partition(".")[0]
        if top in self.exclude or self.origin(top) is not Origin.LOCAL:
            return False
        return _locate_in(self.local[top], dotted) is not None


def _locate_in(local: LocalModule, dotted: str) -> tuple[Path | None, bool] | None:
    """The source file of ``dotted`` inside ``local`` (None for a namespace directory)
    and whether it is a package; None when ``dotted`` names no module there."""
    parts = dotted.split(".")[1:]
    if not local.is_package:
        return None if parts else (local.path, False)
    where = local.path.joinpath(*parts)
    if (where / "__init__.py").is_file():
        return where / "__init__.py", True
    if parts and where.with_suffix(".py").is_file():
        return where.with_suffix(".py"), False
    if where.is_dir():
        return None, True
    return None


def _files_for(local: LocalModule, dotted: str) -> Iterator[tuple[str, Path, bool]]:
    """The source files that importing ``dotted`` runs: each parent package's
    ``__init__.py``, then the module itself."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        found = _locate_in(local, name)
        if found is None:
            return
        file, is_package = found
        if file is not None:
            yield name, file, is_package


def _module_files(local: LocalModule) -> Iterator[tuple[str, Path, bool]]:
    """Every source file of a local module or package, with its dotted name."""
    if not local.is_package:
        yield local.name, local.path, False
        return
    for file in sorted(local.path.rglob("*.py")):
        rel = file.relative_to(local.path).with_suffix("").parts
        if "__pycache__" in rel or any(p.startswith(".") for p in rel):
            continue
        is_package = rel[-1] == "__init__"
        parts = rel[:-1] if is_package else rel
        yield ".".join((local.name, *parts)), file, is_package


# --------------------------------------------------------------------------- public


def _forced(item: ForceItem, finder: _Finder) -> LocalModule:
    if isinstance(item, ModuleType):
        item = item.__name__
    if isinstance(item, os.PathLike) or (
        isinstance(item, str) and ("/" in item or os.sep in item or item.endswith(".py"))
    ):
        path = Path(item).resolve()
        name = path.stem if path.is_file() else path.name
        if not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
            raise InvalidArgument(
                f"cannot ship {str(item)!r}: not a module file (.py) or a package directory"
            )
        if not name.isidentifier():
            raise InvalidArgument(f"cannot ship {str(path)!r}: {name!r} is not a module name")
        return LocalModule(name, path, path.is_dir(), forced=True)
    if not isinstance(item, str):
        raise InvalidArgument(
            f"cannot ship {item!r}: give a module name, a module or a path, "
            f"not a {type(item).__name__}"
        )
    top = item.partition(".")[0]
    origin = finder.origin(top)
    if origin in (Origin.MAIN, Origin.BUILTIN, Origin.STDLIB, Origin.DOLAMBDA):
        raise InvalidArgument(
            f"cannot ship {item!r}: it is {_ORIGIN_TEXT[origin]}, which the function has"
        )
    spec = _spec(top)
    if spec is None:
        raise InvalidArgument(f"cannot ship {item!r}: no module {top!r} is importable here")
    return _local_module(top, spec, forced=True)


_ORIGIN_TEXT = {
    Origin.MAIN: "__main__ (its objects are pickled by value)",
    Origin.BUILTIN: "a builtin module",
    Origin.STDLIB: "part of the standard library",
    Origin.DOLAMBDA: "dolambda itself",
}


def find_code(
    *,
    pickles: Iterable[bytes] = (),
    objects: Iterable[object] = (),
    force: Iterable[ForceItem] | ForceItem = (),
    exclude: Iterable[str] | str = (),
) -> CodeNeeds:
    """Which modules a job needs: those that ship (local), and the installed
    distributions the function must hold.

    ``pickles`` are pickled bytes (the body, a sample of task arguments, the
    combine's inputs); ``objects`` are pickled here with the codec first. ``force``
    always ships (module names, modules, or paths of a module file or package
    directory); ``exclude`` (top-level module names) never ships.
    """
    forced: list[ForceItem] = (
        [force] if isinstance(force, str | os.PathLike | ModuleType) else list(force)
    )
    excluded = {exclude} if isinstance(exclude, str) else set(exclude)
    for name in excluded:
        if not (isinstance(name, str) and name.isidentifier()):
            raise InvalidArgument(
                f"cannot exclude {name!r}: give top-level module names "
                "(a whole package ships or does not)"
            )
    finder = _Finder(
        distributions_by_module=_distributions_by_module(),
        exclude=frozenset(excluded),
    )
    queue: list[str] = []
    for item in forced:
        local = _forced(item, finder)
        if local.name in excluded:
            raise InvalidArgument(f"{local.name!r} is both forced and excluded; pick one")
        finder.local[local.name] = local
        finder.origins[local.name] = Origin.LOCAL
        queue.append(local.name)
    blobs = list(pickles)
    for obj in objects:
        try:
            blobs.append(codec.dumps(obj))
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {codec.describe(obj)} to find the modules it needs: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    for blob in blobs:
        for dotted in sorted(pickled_modules(blob)):
            finder.need(dotted, PICKLED, False, queue)
    finder.scan(queue)
    return _result(finder)


def _result(finder: _Finder) -> CodeNeeds:
    # a local module is classified only once something needs it (or it is forced)
    shipped = {n: m for n, m in finder.local.items() if finder.origins.get(n) is Origin.LOCAL}
    by_dist: dict[str, tuple[set[str], set[str], bool, bool]] = {}
    for top, users in finder.needed.items():
        for dist in finder.distributions_by_module[top]:
            imports, needed_by, optional, lazy = by_dist.setdefault(
                dist, (set(), set(), True, True)
            )
            imports.add(top)
            needed_by.update(by for by, _, _ in users)
            by_dist[dist] = (
                imports,
                needed_by,
                optional and all(o for _, o, _ in users),
                lazy and all(z for _, _, z in users),
            )
    distributions = tuple(
        NeededDistribution(
            name=dist,
            version=_version(dist),
            imports=tuple(sorted(imports)),
            needed_by=tuple(sorted(needed_by)),
            optional=optional,
            lazy=lazy,
        )
        for dist, (imports, needed_by, optional, lazy) in sorted(by_dist.items())
    )
    stdlib = sorted(
        top for top, o in finder.origins.items() if o in (Origin.STDLIB, Origin.BUILTIN)
    )
    return CodeNeeds(
        local=tuple(shipped[name] for name in sorted(shipped)),
        distributions=distributions,
        stdlib=tuple(stdlib),
        missing=tuple(sorted(finder.missing)),
        excluded=tuple(sorted(finder.excluded)),
    )


_dists_cache: dict[tuple[tuple[str, int], ...], dict[str, list[str]]] = {}


def _distributions_by_module() -> dict[str, list[str]]:
    """``importlib.metadata.packages_distributions()`` (a few hundred ms), cached
    until ``sys.path`` or one of its directories changes (installing a distribution
    touches its site-packages directory)."""
    stamp = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, 0))
    key = tuple(stamp)
    if key not in _dists_cache:
        _dists_cache.clear()
        _dists_cache[key] = dict(importlib.metadata.packages_distributions())
    return _dists_cache[key]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""
