"""The installed distributions a job needs, against what the function's package holds.

``dolambda deploy`` records the distributions (and versions) the function's package
holds (``package.json``, :mod:`dolambda.deploy.package`). Before dispatch the client
compares what the finder saw the job import (:attr:`CodeNeeds.distributions`) with
that record: a distribution the function lacks is one :class:`ConfigError` naming the
import, the distribution and the deploy command that adds it, instead of every
iteration failing with ``ModuleNotFoundError`` on the worker. A distribution that
carries data across (pickled arrays, frames, seeded random streams: numpy, pandas,
...) at another version than the client's is a warning (once per versions pair).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dolambda._code.finder import PICKLED, CodeNeeds, NeededDistribution
from dolambda._errors import ConfigError

# the same list as dolambda.deploy.package.DATA_DISTRIBUTIONS (deploy pins them)
DATA_DISTRIBUTIONS = frozenset(
    {"numpy", "pandas", "pyarrow", "scipy", "polars", "scikit-learn", "xarray"}
)


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class FunctionPackage:
    """What a deployed function's package holds, from its record."""

    function_name: str
    distributions: Mapping[str, str]  # normalized name -> version
    where: str  # where the record was read, for messages
    #: what its worker does beyond running tasks (``dolambda._wire.events.FEATURES`` of
    #: the dolambda that built it; empty for a package older than the record's field)
    features: frozenset[str] = frozenset()

    @classmethod
    def from_record(cls, record: Mapping[str, Any], function_name: str, where: str) -> Any:
        """None when ``record`` is not a package record this client understands."""
        dists = record.get("distributions")
        if not isinstance(dists, dict):
            return None
        features = record.get("features")
        return cls(
            function_name=function_name,
            distributions={normalize(str(k)): str(v) for k, v in dists.items()},
            where=where,
            features=frozenset(str(f) for f in (features if isinstance(features, list) else ())),
        )


def _who(dist: NeededDistribution) -> str:
    users = [u for u in dist.needed_by if u != PICKLED]
    via = []
    if PICKLED in dist.needed_by:
        via.append("the body or its arguments")
    if users:
        via.append("module " + ", ".join(users))
    return " and ".join(via) or "the job"


def _client_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _version_warning(function: FunctionPackage, dist: str, there: str, here: str) -> str:
    return (
        f"the function {function.function_name!r} has {dist} {there} and this "
        f"client {here}: pickled {dist} objects and seeded random "
        f"streams may differ between the two. Redeploy from here (`dolambda deploy`) "
        f"to pin {dist}=={here}, or install {dist}=={there} here"
    )


def check_distributions(
    needs: CodeNeeds, function: FunctionPackage, *, seeded: bool = False
) -> list[str]:
    """Raise ConfigError when the function lacks a distribution the job imports (not
    an optional one, nor one imported only inside functions); return the warnings:
    one per data-carrying distribution whose version differs between the client and
    the function (numpy also when the job is ``seeded``: the worker seeds from it),
    one per lacking distribution imported only inside functions."""
    missing = []
    warnings = []
    for dist in needs.distributions:
        name = normalize(dist.name)
        there = function.distributions.get(name)
        if there is None:
            if dist.lazy and not dist.optional:  # maybe never called: say so, run
                imports = ", ".join(dist.imports)
                warnings.append(
                    f"the function {function.function_name!r} does not have {dist.name} "
                    f"(imported inside a function of {_who(dist)}): a call that imports "
                    f"{imports} fails there. Add it with `dolambda deploy --requirements "
                    f"FILE` listing {dist.name}=={dist.version}"
                )
            elif not dist.optional:
                missing.append(dist)
            continue
        if name in DATA_DISTRIBUTIONS and dist.version and there != dist.version:
            warnings.append(_version_warning(function, dist.name, there, dist.version))
    # a seeded job's streams come from numpy on the worker, whatever the body imports
    numpy_there, numpy_here = function.distributions.get("numpy"), _client_version("numpy")
    named = {normalize(d.name) for d in needs.distributions}
    if seeded and "numpy" not in named and numpy_there and numpy_here != numpy_there:
        warnings.append(_version_warning(function, "numpy", numpy_there, numpy_here))
    if missing:
        lines = [
            f"import {', '.join(d.imports)} (distribution {d.name} {d.version}, imported by "
            f"{_who(d)})"
            for d in missing
        ]
        pins = " ".join(f"{d.name}=={d.version}" if d.version else d.name for d in missing)
        held = ", ".join(sorted(function.distributions)) or "nothing"
        imports = ", ".join(repr(i) for d in missing for i in d.imports)
        raise ConfigError(
            f"the job needs {len(missing)} distribution(s) the function "
            f"{function.function_name!r} does not have: "
            + "; ".join(lines)
            + f". Its package holds only {held} (as recorded in {function.where}). Add them "
            f"to the function: write `{pins}` in a requirements file and run "
            f"`dolambda deploy --requirements FILE`; or, if the job does not really import "
            f"them, keep them out with .noexport({imports}). "
            "Nothing was dispatched"
        )
    return warnings
