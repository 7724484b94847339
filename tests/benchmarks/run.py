"""Run the dolambda benchmark suite: ``make bench`` or ``python tests/benchmarks/run.py``.

Every run measures its own baselines, prints a table of ratios and writes JSON
(``bench-results.json`` in the repo root unless ``--out``). See docs/scaling.md.

Sections (``--only`` takes these names): local, s3raw, requests, e2e, fanin, backups,
call, split, dispatch, tiers, cpu, memory, peer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `tests.benchmarks` (and dolambda) import from the checkout

from tests.benchmarks import _common  # noqa: E402
from tests.benchmarks._common import Row, Server, log  # noqa: E402

SECTIONS = (
    "local",
    "s3raw",
    "requests",
    "e2e",
    "fanin",
    "backups",
    "call",
    "split",
    "dispatch",
    "tiers",
    "cpu",
    "memory",
    "peer",
)


#: the sections that are one call ``fn(server, quick) -> rows``: name -> (module under
#: tests.benchmarks, function, which server: "moto" where emulators need S3 events and
#: Invoke, "main" for the --endpoint-url / --s3 server)
ONE_CALL: dict[str, tuple[str, str, str]] = {
    "requests": ("bench_lambda", "requests_section", "moto"),
    "fanin": ("bench_lambda", "fanin_section", "main"),
    "backups": ("bench_lambda", "backups_section", "main"),
    "call": ("bench_lambda", "call_section", "main"),
    "split": ("bench_lambda", "split_section", "main"),
    # (the dispatchers Invoke the function: the emulator's moto server)
    "dispatch": ("bench_dispatch", "dispatch_section", "moto"),
    "tiers": ("bench_tiers", "run", "moto"),
    "cpu": ("bench_cpu", "run", "main"),
    "memory": ("bench_memory", "run", "main"),
}


def name_module(name: str) -> str:
    """The module of section ``name``."""
    if name in ONE_CALL:
        return ONE_CALL[name][0]
    return {"e2e": "bench_lambda"}.get(name, f"bench_{name}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--endpoint-url", help="run the S3 parts against this S3 endpoint")
    p.add_argument(
        "--s3",
        choices=("moto", "seaweedfs"),
        default="moto",
        help="which local S3 server to start when no --endpoint-url (default: moto)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    p.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--out", default=str(ROOT / "bench-results.json"), help="JSON output path")
    return p.parse_args(argv)


class Servers:
    """Starts S3 servers on first use and stops them at the end."""

    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.stack = stack
        self._main: Server | None = None
        self._moto: Server | None = None

    def moto(self) -> Server:
        """The emulator's moto server (S3 events and Invoke reach emulators)."""
        if self._moto is None:
            if self._main is not None and self._main.kind == "moto":
                self._moto = self._main
            else:
                log("starting a moto server")
                self._moto = self.stack.enter_context(_common.moto_server())
        return self._moto

    def main(self) -> Server:
        """The server the S3 throughput parts run on (--endpoint-url, --s3)."""
        if self._main is None:
            if self.args.endpoint_url:
                from dolambda.emulator import Emulator

                probe = Emulator(endpoint_url=self.args.endpoint_url)
                self._main = Server(self.args.endpoint_url, "external", probe._has_mailbox())
            elif self.args.s3 == "seaweedfs":
                log("starting SeaweedFS")
                self._main = self.stack.enter_context(_common.seaweedfs_server())
            else:
                self._main = self.moto()
        return self._main


@contextlib.contextmanager
def section(name: str, rows: list[Row], errors: list[str]) -> Iterator[None]:
    log(f"== section {name}")
    t0 = time.perf_counter()
    try:
        yield
    except Exception as exc:  # one broken section must not lose the others
        import traceback

        traceback.print_exc()
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
        rows.append(Row(name, "section failed", None, "", note=f"{type(exc).__name__}: {exc}"))
    log(f"== section {name} done in {time.perf_counter() - t0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        print(f"unknown sections: {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
        return 2
    wanted = only or list(SECTIONS)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    rows: list[Row] = []
    errors: list[str] = []
    raw: dict[str, float] = {}
    ours: dict[str, float] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        servers = Servers(args, stack)
        for name in SECTIONS:
            needed = name in wanted or (name == "s3raw" and "e2e" in wanted)
            if not needed and not (name == "e2e" and "peer" in wanted):
                continue
            module = importlib.import_module(f"tests.benchmarks.{name_module(name)}")
            with section(name, rows, errors):
                if name == "local":
                    rows += module.run(args.quick)
                elif name == "s3raw":  # (its raw rates are e2e's baselines)
                    got, raw = module.run(servers.main(), args.quick)
                    rows += got
                elif name == "e2e":  # (its own rates are the peers' baselines)
                    got, ours = module.e2e_section(servers.main(), raw, args.quick)
                    rows += got
                elif name == "peer":
                    rows += module.run(servers.main(), ours, args.quick)
                else:
                    _, fn, server = ONE_CALL[name]
                    rows += getattr(module, fn)(getattr(servers, server)(), args.quick)
        server_kind = servers._main.kind if servers._main else ""
        server_url = servers._main.url if servers._main else ""
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "sections": wanted,
        "s3_server": server_kind,
        "s3_endpoint": server_url,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "errors": errors,
    }
    out = Path(args.out)
    _common.write_json(out, rows, meta)
    print()
    print(_common.table(rows))
    met = [r for r in rows if r.met is not None]
    print(
        f"\n{sum(1 for r in met if r.met)}/{len(met)} targets met; S3 server: {server_kind} "
        f"{server_url}; {meta['seconds']:.0f}s; results in {out}"
    )
    for e in errors:
        print(f"section error: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
