"""What is installed here: the distributions of this interpreter and their requirement closure.

:func:`copy_distributions` copies installed distributions (files from each one's
``RECORD``) and every requirement they need on this interpreter (PEP 508 markers
evaluated here, extras followed) into a directory. The emulator's runtime directory
and the local deployment package (:func:`dolambda.deploy.package.build_local_package`)
are built with it, offline, from this machine's site-packages. Standard library only.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from dolambda._errors import ConfigError

__all__ = ["closure", "copy_distributions", "normalize"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|\(|\))"
    r"|(?P<word>not\s+in\b|[A-Za-z_][A-Za-z0-9_.]*))"
)
_VERSION_VARS = {"python_version", "python_full_version", "implementation_version"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_env() -> dict[str, str]:
    impl = sys.implementation.version
    return {
        "os_name": os.name,
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_version": "{}.{}".format(*sys.version_info[:2]),
        "python_full_version": platform.python_version(),
        "implementation_name": sys.implementation.name,
        "implementation_version": f"{impl.major}.{impl.minor}.{impl.micro}",
    }


def _compare(left: str, op: str, right: str, versions: bool) -> bool:
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    if op == "===":
        return left == right
    a: object = left
    b: object = right
    if versions and re.fullmatch(r"\d+(\.\d+)*", left) and re.fullmatch(r"\d+(\.\d+)*", right):
        ta, tb = tuple(map(int, left.split("."))), tuple(map(int, right.split(".")))
        if op == "~=":  # compatible release: >= right and the same prefix but the last part
            return ta >= tb and ta[: len(tb) - 1] == tb[: len(tb) - 1]
        width = max(len(ta), len(tb))
        a, b = ta + (0,) * (width - len(ta)), tb + (0,) * (width - len(tb))
    table: dict[str, Callable[[object, object], bool]] = {
        "==": lambda x, y: x == y,
        "!=": lambda x, y: x != y,
        "<": lambda x, y: x < y,  # type: ignore[operator]
        "<=": lambda x, y: x <= y,  # type: ignore[operator]
        ">": lambda x, y: x > y,  # type: ignore[operator]
        ">=": lambda x, y: x >= y,  # type: ignore[operator]
        "~=": lambda x, y: x == y,
    }
    return table[op](a, b)


def _marker_true(marker: str, env: Mapping[str, str]) -> bool:
    """Evaluate a PEP 508 environment marker (``extra`` taken from ``env``)."""
    tokens: list[str] = []
    pos = 0
    while pos < len(marker.rstrip()):
        match = _TOKEN.match(marker, pos)
        if match is None:
            raise ConfigError(f"cannot parse the environment marker {marker!r}")
        tokens.append(re.sub(r"\s+", " ", match.group(match.lastgroup or 0)))
        pos = match.end()
    at = 0

    def value() -> tuple[str, str]:
        nonlocal at
        token = tokens[at]
        at += 1
        if token[0] in "'\"":
            return token[1:-1], ""
        if token == "extra":
            return env.get("extra", ""), token
        if token not in env:
            raise ConfigError(f"unknown variable {token!r} in the environment marker {marker!r}")
        return env[token], token

    def atom() -> bool:
        nonlocal at
        if tokens[at] == "(":
            at += 1
            result = disjunction()
            at += 1  # ")"
            return result
        (left, lvar), op = value(), tokens[at]
        at += 1
        right, rvar = value()
        if "extra" in (lvar, rvar):  # extra names compare normalized
            left, right = normalize(left), normalize(right)
        return _compare(left, op, right, bool({lvar, rvar} & _VERSION_VARS))

    def conjunction() -> bool:
        nonlocal at
        result = atom()
        while at < len(tokens) and tokens[at] == "and":
            at += 1
            result = atom() and result
        return result

    def disjunction() -> bool:
        nonlocal at
        result = conjunction()
        while at < len(tokens) and tokens[at] == "or":
            at += 1
            result = conjunction() or result
        return result

    return disjunction()


def closure(names: Iterable[str]) -> list[md.Distribution]:
    """The installed distributions ``names`` name (``pkg`` or ``pkg[extra]``) and every
    requirement they need on this interpreter, sorted by normalized name."""
    env = _marker_env()
    found: dict[str, md.Distribution] = {}
    extras_done: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str], str]] = []
    for spec in names:
        match = _NAME.match(spec)
        if match is None:
            raise ConfigError(f"not a distribution name: {spec!r}")
        extras = frozenset(normalize(e) for e in (match.group(2) or "").split(",") if e.strip())
        todo.append((match.group(1), extras, "the caller"))
    while todo:
        name, extras, wanted_by = todo.pop()
        key = normalize(name)
        seen = extras_done.setdefault(key, set())
        if key in found and extras <= seen:
            continue
        try:
            dist = found.get(key) or md.distribution(name)
        except md.PackageNotFoundError:
            raise ConfigError(
                f"distribution {name!r} (required by {wanted_by}) is not installed here"
            ) from None
        found[key] = dist
        seen |= extras
        for req in dist.requires or ():
            text, _, marker = req.partition(";")
            match = _NAME.match(text)
            if match is None:
                continue
            applies = not marker.strip() or any(
                _marker_true(marker, {**env, "extra": extra}) for extra in ("", *sorted(seen))
            )
            if applies:
                sub = frozenset(
                    normalize(e) for e in (match.group(2) or "").split(",") if e.strip()
                )
                todo.append((match.group(1), sub, dist.metadata["Name"]))
    return [found[key] for key in sorted(found)]


def copy_distributions(names: Iterable[str], dest: Path) -> dict[str, str]:
    """Copy the installed distributions ``names`` and their requirement closure into
    ``dest`` (files from each distribution's RECORD, ``*.dist-info`` included, no
    ``__pycache__``); return ``{normalized name: version}``. The same installed
    distributions give the same files, whatever the order of ``names``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied: dict[str, str] = {}
    for dist in closure(names):
        name = normalize(dist.metadata["Name"])
        if dist.files is None:
            raise ConfigError(f"distribution {name!r} has no RECORD: cannot tell its files")
        root = Path(str(dist.locate_file(""))).resolve()
        for item in sorted(dist.files, key=str):
            rel = Path(str(item))
            src = Path(str(dist.locate_file(item))).resolve()
            if "__pycache__" in rel.parts or rel.suffix == ".pyc" or not src.is_file():
                continue
            if not src.is_relative_to(root):  # scripts and data outside site-packages
                continue
            target = dest / src.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            shutil.copymode(src, target)
        copied[name] = dist.version
    return copied
