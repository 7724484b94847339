"""The wire codec: dill for Python objects, zlib for size, HMAC-SHA256 for trust.

It owns how bytes are made and read on both sides (the client imports it; it
imports nothing of the execution path): sealing and unsealing, the *context*
each kind of object is signed for (:func:`manifest_context` ...
:func:`outcome_context`), pickling of bodies and values (:func:`dumps`,
:func:`encode_run` and :func:`decode_values` for a chunk's results), the
signing key's text form, and the interpreter version pickles depend on.

Every object that crosses a process boundary is *sealed*::

    b"DLS1" | flags (1 byte) | HMAC-SHA256 (32 bytes) | payload

The MAC covers a *context* (the object's logical name, e.g.
``"jobs/<id>/manifest"``), the flags and the payload, so an object moved from
another job or another key fails verification just as a flipped byte does.
Nothing is unpickled before its MAC has been checked.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import io
import json
import pickle
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import dill
from pydantic import BaseModel, ValidationError

from dolambda._errors import SerializationError, SignatureError, VersionMismatch
from dolambda._wire.models import IterationError, TaskOutcome

MAGIC = b"DLS1"
_HEADER = len(MAGIC) + 1 + 32
_ZLIB = 0x01
COMPRESS_OVER = 64 * 1024  # bytes; smaller payloads are not worth the CPU
# compression must save at least this fraction of a sample, or the payload goes as it is
# (random or already compressed data: zlib would spend ~70 ms a MB to save nothing)
COMPRESS_MIN_SAVING = 0.10
_SAMPLE = 16 * 1024  # bytes in each of the sample's slices

M = TypeVar("M", bound=BaseModel)


def manifest_context(job_id: str) -> str:
    return f"jobs/{job_id}/manifest"


def plan_context(job_id: str) -> str:
    return f"jobs/{job_id}/plan"


def dispatch_context(job_id: str) -> str:
    """A remotely dispatched job's tasks (``keys.dispatch_plan_key``)."""
    return f"jobs/{job_id}/dispatch"


def body_context(digest: str) -> str:
    """A body is signed for its content (sha256 ``digest``), not for one job: jobs with the
    same body share one object (``keys.body_key``). Each job's signed manifest names the
    digest it runs, and the worker checks the body against it."""
    return f"bodies/{digest}"


def task_context(job_id: str, task_id: int) -> str:
    return f"queue/{job_id}/{task_id}"


def outcome_context(job_id: str, task_id: int) -> str:
    return f"results/{job_id}/{task_id}"


def key_tag(key: bytes, digest: str) -> str:
    """A short name for ``key`` in the key of an object stored by content: the same
    content signed with another key is another object (16 hex digits of an HMAC, which
    say nothing of the key)."""
    mac = hmac.new(key, b"dolambda-object-name\0" + digest.encode(), hashlib.sha256)
    return mac.hexdigest()[:16]


def signing_key_bytes(text: str | bytes) -> bytes:
    """A signing key given as text: hex when it parses as hex (64 digits from deploy)."""
    if isinstance(text, bytes):
        return text
    try:
        if len(text) >= 32 and len(text) % 2 == 0:
            return bytes.fromhex(text)
    except ValueError:
        pass
    return text.encode()


def python_version() -> str:
    """This interpreter's ``major.minor``: dill pickles are not portable across versions."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _mac(key: bytes, context: str, flags: int, payload: bytes) -> bytes:
    h = hmac.new(key, context.encode() + b"\0" + bytes([flags]), hashlib.sha256)
    h.update(payload)
    return h.digest()


def compression_pays(payload: bytes) -> bool:
    """Whether zlib is worth it for ``payload``: it is large, and a sample of it (slices
    from four places) shrinks by at least :data:`COMPRESS_MIN_SAVING`."""
    size = len(payload)
    if size <= COMPRESS_OVER:
        return False
    step = (size - _SAMPLE) // 3
    sample = b"".join(payload[i * step : i * step + _SAMPLE] for i in range(4))
    return len(zlib.compress(sample, 1)) <= len(sample) * (1 - COMPRESS_MIN_SAVING)


def seal(payload: bytes, *, key: bytes, context: str, compress: bool | None = None) -> bytes:
    """Return ``payload`` framed and signed for ``context``; ``compress=None``: compressed
    when :func:`compression_pays`."""
    flags = 0
    if compress or (compress is None and compression_pays(payload)):
        payload = zlib.compress(payload, 1)
        flags |= _ZLIB
    return MAGIC + bytes([flags]) + _mac(key, context, flags, payload) + payload


def unseal(blob: bytes, *, key: bytes, context: str) -> bytes:
    """Verify ``blob`` for ``context`` and return its payload, or raise SignatureError."""
    if len(blob) < _HEADER or blob[: len(MAGIC)] != MAGIC:
        raise SignatureError(
            f"object {context!r} is not a signed dolambda object; refusing to read it"
        )
    flags = blob[len(MAGIC)]
    mac = blob[len(MAGIC) + 1 : _HEADER]
    payload = blob[_HEADER:]
    if not hmac.compare_digest(mac, _mac(key, context, flags, payload)):
        raise SignatureError(
            f"object {context!r} has a wrong signature (tampered, moved from another job, "
            "or signed with another key); nothing from it was unpickled. Check that the "
            "client and the function share the same DOLAMBDA_SIGNING_KEY."
        )
    if flags & _ZLIB:
        payload = zlib.decompress(payload)
    return payload


class _DataPickler(pickle.Pickler):
    """The C pickler, refusing what only dill can carry faithfully: functions, classes
    and instances of classes defined in ``__main__`` (a script or a notebook), which the
    C pickler would store by a reference that the worker cannot resolve."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__":
            raise pickle.PicklingError("defined in __main__")
        if type(obj).__module__ == "__main__":
            raise pickle.PicklingError("an instance of a class defined in __main__")
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``: the C pickler for plain data (100x faster), dill for the rest
    (lambdas, closures, ``__main__`` functions by value, with only the globals they use).
    Both are read back by :func:`loads`."""
    buffer = io.BytesIO()
    try:
        _DataPickler(buffer, protocol=5).dump(obj)
        return buffer.getvalue()
    except Exception:
        return bytes(dill.dumps(obj, recurse=True, byref=False))


def loads(data: bytes) -> Any:
    """Unpickle bytes that were already verified by :func:`unseal` (C pickle or dill)."""
    return pickle.loads(data)


def seal_model(model: BaseModel, *, key: bytes, context: str) -> bytes:
    return seal(model.model_dump_json().encode(), key=key, context=context)


def unseal_model(cls: type[M], blob: bytes, *, key: bytes, context: str) -> M:
    """Verify ``blob`` and decode it as ``cls``. An object that does not fit ``cls``
    because the other side speaks another wire version raises VersionMismatch saying
    so (not a validation error about fields this side does not know)."""
    payload = unseal(blob, key=key, context=context)
    try:
        return cls.model_validate_json(payload)
    except ValidationError:
        field = cls.model_fields.get("wire_version")
        try:
            theirs = json.loads(payload).get("wire_version")
        except (ValueError, AttributeError):
            theirs = None
        if field is not None and isinstance(theirs, int) and theirs != field.default:
            raise VersionMismatch(
                f"object {context!r} was written by a dolambda speaking wire version {theirs}; "
                f"this side speaks {field.default}. Run the same dolambda version on the "
                "client and the function (`dolambda deploy` packages the client's version)."
            ) from None
        raise


_ALL_VALUES, _PER_VALUE = b"A", b"P"


def encode_run(
    values: Sequence[Any], errors: Mapping[int, IterationError]
) -> tuple[list[IterationError], bytes]:
    """Pickle a chunk's values (``errors`` says which are the body's exceptions) in one go;
    when that fails, one by one, so an unpicklable result fails only its own iteration.
    Returns the errors (with any such failures added) and the encoded values."""
    if not errors:  # exceptions may pickle yet not unpickle: they go one by one
        try:
            return [], _ALL_VALUES + dumps(list(values))
        except Exception:
            pass
    found, blobs = encode_each(values, errors)
    return [found[k] for k in sorted(found)], join_values(blobs)


def encode_each(
    values: Sequence[Any], errors: Mapping[int, IterationError]
) -> tuple[dict[int, IterationError], list[bytes | None]]:
    """Pickle each value on its own (``None`` for one that cannot be pickled, which
    becomes its iteration's error); :func:`join_values` makes the encoded values of
    the blobs, so a worker can stream its iterations' results and keep what finished."""
    found = dict(errors)
    blobs: list[bytes | None] = []
    for k, value in enumerate(values):
        try:
            blob: bytes | None = dumps(value)
        except Exception as exc:
            blob = None
            if k not in found:
                found[k] = IterationError(
                    position=k,
                    error_type="SerializationError",
                    error_message=(
                        f"its result (a {type(value).__module__}.{type(value).__qualname__}) "
                        "cannot be pickled: "
                        f"{type(exc).__name__}: {exc}"
                    ),
                )
        blobs.append(blob)
    return found, blobs


def join_values(blobs: Sequence[bytes | None]) -> bytes:
    """The encoded values (see :func:`decode_values`) of per-value pickles."""
    return _PER_VALUE + dumps(list(blobs))


def decode_values(outcome: TaskOutcome) -> tuple[list[Any], dict[int, IterationError]]:
    """The values of a verified outcome, one for each iteration that ran, and an error for
    each value this process cannot unpickle (a class it cannot import, another numpy):
    such an iteration failed here, it is never a ``None`` result."""
    count = outcome.ran
    if not outcome.values:
        return [None] * count, {}
    kind, data = outcome.values[:1], outcome.values[1:]
    if kind == _ALL_VALUES:
        try:
            return list(loads(data)), {}
        except Exception as exc:
            # one pickle for the whole chunk: read it again with stand-ins for what cannot
            # be imported here, so only the iterations that hold one fail
            return _decode_around(data, count, exc)
    blobs: list[bytes | None] = loads(data)
    values: list[Any] = []
    errors: dict[int, IterationError] = {}
    for k, blob in enumerate(blobs):
        if blob is None:
            values.append(None)
            continue
        try:
            values.append(loads(blob))
        except Exception as exc:
            values.append(None)
            errors[k] = _undecodable(_said(exc), k)
    return values, errors


class _Missing:
    """Stands in, while a chunk's values are read again, for a class or function this
    process cannot import; an iteration whose value holds one failed."""

    missing: ClassVar[str] = ""
    error: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            return type(name, (_Missing,), {"missing": f"{module}.{name}", "error": _said(exc)})


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stand_in(value: Any, budget: list[int]) -> _Missing | type[_Missing] | None:
    """The first stand-in inside ``value`` (containers searched, at most ``budget`` items)."""
    if isinstance(value, _Missing) or (isinstance(value, type) and issubclass(value, _Missing)):
        return value
    budget[0] -= 1
    if budget[0] < 0:
        return None
    items: Iterable[Any] = ()
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif hasattr(value, "__dict__") and isinstance(value.__dict__, dict):
        items = value.__dict__.values()
    for item in items:
        found = _stand_in(item, budget)
        if found is not None:
            return found
    return None


def _decode_around(
    data: bytes, count: int, first: BaseException
) -> tuple[list[Any], dict[int, IterationError]]:
    try:
        values = list(_StandInUnpickler(io.BytesIO(data)).load())
    except Exception:  # not even with stand-ins: every iteration of the chunk failed
        error = _undecodable(_said(first))
        return [None] * count, {k: error.model_copy(update={"position": k}) for k in range(count)}
    errors: dict[int, IterationError] = {}
    for k, value in enumerate(values):
        found = _stand_in(value, [10_000])
        if found is not None:
            errors[k] = _undecodable(f"{found.error} (needed for {found.missing})", k)
            values[k] = None
    if not errors:  # the stand-ins were not what failed
        error = _undecodable(_said(first))
        return [None] * count, {k: error.model_copy(update={"position": k}) for k in range(count)}
    return values, errors


def _undecodable(said: BaseException | str, position: int = 0) -> IterationError:
    return IterationError(
        position=position,
        error_type="SerializationError",
        error_message=(
            f"its result cannot be unpickled in the client: {said} (the client needs every "
            "module and class the result refers to, in the versions the function has)"
        ),
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(obj: Any) -> str:
    """A short description of an object for error messages: its type and repr."""
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


def dumps_body(fn: Callable[..., Any]) -> bytes:
    """Pickle a loop body, or raise SerializationError naming what it captures that fails."""
    try:
        return dumps(fn)
    except Exception as exc:
        culprit = _find_unpicklable_capture(fn)
        where = f"; it captures {culprit}" if culprit else ""
        raise SerializationError(
            f"the loop body {getattr(fn, '__qualname__', fn)!r} cannot be serialized with "
            f"dill{where}: {type(exc).__name__}: {exc}. Create such objects inside the body "
            "instead of capturing them."
        ) from exc


def captured_sizes(fn: Callable[..., Any]) -> list[tuple[str, int]]:
    """What a body closes over (closure cells, globals, defaults) and the bytes each
    pickles to, largest first (modules and what cannot pickle left out)."""
    sizes: list[tuple[str, int]] = []
    for name, value in _captures(fn):
        if inspect.ismodule(value):
            continue
        try:
            sizes.append((name, len(dumps(value))))
        except Exception:
            continue
    return sorted(sizes, key=lambda item: -item[1])


def _captures(fn: Callable[..., Any]) -> list[tuple[str, Any]]:
    """Names and values a function closes over: closure cells, globals, defaults."""
    found: list[tuple[str, Any]] = []
    code = getattr(fn, "__code__", None)
    if code is None:
        return (
            [(name, value) for name, value in vars(fn).items()] if hasattr(fn, "__dict__") else []
        )
    closure = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            found.append((name, cell.cell_contents))
        except ValueError:  # empty cell
            continue
    glob = getattr(fn, "__globals__", {})
    for name in _global_names(code):
        if name in glob:
            found.append((name, glob[name]))
    for i, default in enumerate(getattr(fn, "__defaults__", None) or ()):
        found.append((f"default #{i}", default))
    return found


def _global_names(code: Any) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names.extend(_global_names(const))
    return names


def _find_unpicklable_capture(fn: Callable[..., Any]) -> str:
    for name, value in _captures(fn):
        if inspect.ismodule(value):
            continue
        try:
            dumps(value)
        except Exception:
            return f"{name!r} ({describe(value)})"
    return ""
