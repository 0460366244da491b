"""The enqueue-time payload gate: every payload passes here before any SQL runs.

A job's payload is stored in a ``jsonb`` column. Refusing here what PostgreSQL would refuse (or,
worse, store differently from what the caller passed) is cheaper and much clearer, naming the task
and the field, than a ``DataError`` from the middle of a bulk insert. :func:`encode` refuses:

- **values orjson cannot serialise**: unsupported types (``set``, arbitrary objects), strings with
  lone surrogates (not valid UTF-8, so not valid JSON text), dict keys that are not ``str``,
  integers outside 64 bits, and nesting deeper than orjson's limit of 254 levels (which also catches
  reference cycles). orjson raises for all of these, so this check is free.
- **NaN and ±Infinity**: JSON has no spelling for them and orjson silently writes ``null``, which
  would store a different value from the one passed. A non-finite float can only hide behind a
  ``null`` in the output, so the object is walked only when ``b"null"`` occurs in the encoded bytes;
  payloads without nulls pay nothing beyond one ``memchr``-speed scan.
- **U+0000 in any string, value or key**: ``jsonb`` cannot hold it (PostgreSQL text never can) and
  the insert fails with ``unsupported Unicode escape sequence``. orjson always writes NUL as the six
  bytes ``\\u0000``, so a substring scan finds every candidate; the walk that names the field runs
  only on a hit (which may be a false alarm, e.g. a literal backslash followed by ``u0000``).
- **naive** ``datetime`` **and** ``time`` **values**: they name no instant, and written as
  they are they would read like times in some zone nobody chose. The other values orjson
  writes that are not JSON types are encoded by one documented rule, and a handler receives
  them as strings: an aware ``datetime`` (or ``time``) as ISO 8601 with its UTC offset
  (``2024-05-01T12:00:00+02:00``: the offset is never dropped or converted), a ``date`` as
  ``2024-05-01``, a ``UUID`` in its canonical 36-character form. ``Decimal`` stays refused
  (its digits would silently become a float).
- **payloads larger than ``max_bytes`` once encoded**: a queue row is not a blob store, and
  ``jsonb`` itself cannot exceed 255 MiB. The size is checked before the NaN/NUL walks, so an
  oversized payload is never walked.

Optional per-task validation (:func:`compile_validator`) runs before encoding. A validator is
compiled once, at :class:`PayloadGate` construction, from either an inline JSON Schema (compiled to
Python by fastjsonschema) or an import path to a pydantic v2 model, a ``pydantic.TypeAdapter`` or a
plain callable. Validators only check: the payload stored is always the caller's object, never a
coerced copy, and JSON Schema defaults are not filled in, so validation never mutates the caller's
data.

Nothing here logs payload contents: they may hold personal data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import importlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
import orjson

from skivi.errors import ConfigError, PayloadError, shown

__all__ = ["PayloadGate", "compile_validator", "encode"]

logger = logging.getLogger(__name__)

Validator = Callable[[object], None]
_Path = tuple[str | int, ...]

# orjson serialises 254 nested containers and raises on the 255th. The walks below stop there too,
# so a cyclic or absurdly deep payload can never make them loop or run long.
_ORJSON_MAX_DEPTH = 254
_ORJSON_RECURSION_MESSAGE = "Recursion limit reached"
_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})


def _encode_time(value: object) -> str:
    """orjson's ``default`` for the date and time types it passes through
    (OPT_PASSTHROUGH_DATETIME): naive values are refused, aware ones keep their offset."""
    if isinstance(value, dt.datetime | dt.time):
        if value.utcoffset() is None:
            kind = type(value).__name__
            raise TypeError(f"a naive {kind} is ambiguous (no time zone); give it a tzinfo "
                            "(e.g. datetime.UTC) or send an ISO 8601 string")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, default=_encode_time, option=_OPTIONS)


def encode(task: str, payload: object, max_bytes: int) -> bytes:
    """Serialise ``payload`` to JSON bytes that ``jsonb`` stores without loss.

    Raises:
        PayloadError: naming ``task`` and, where it can be found, the failing field's path
            (``items[3].price``).
    """
    try:
        data = _dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise _unserialisable(task, payload, exc) from exc
    size = len(data)
    if size > max_bytes:
        raise PayloadError(
            task, f"encoded payload is {size} bytes, over the limit of {max_bytes} bytes"
        )
    # orjson writes a backslash only for an escape, and most payloads have none, so a memchr for
    # it spares the slower six-byte search almost always.
    if data.find(b"\\") != -1 and data.find(b"\\u0000") != -1:
        path = _find(payload, _has_nul, _key_has_nul)
        if path is not None:
            raise PayloadError(
                task, "strings cannot contain U+0000 (jsonb rejects it)", _format_path(path)
            )
    # bytes.find rather than `in`: the same search with less call overhead on small payloads.
    if data.find(b"null") != -1 and _has_non_finite(payload):
        path = _find(payload, _is_non_finite, _never)
        if path is not None:
            raise PayloadError(
                task,
                "NaN and Infinity are not JSON (orjson would silently store null)",
                _format_path(path),
            )
    return data


def encode_proven(value: object, max_bytes: int) -> bytes | None:
    """One JSON encoding of ``value`` (a list holding many payloads) when it proves every
    payload in it acceptable at once, else None, and the caller checks them one by one
    (``encode``), which names the offending one. Proven: it encodes; it holds no escape at
    all, so no U+0000; no ``null``, so no NaN or Infinity (which orjson writes as null); and
    it is at most ``max_bytes`` long, so no payload in it is longer."""
    try:
        data = _dumps(value)
    except orjson.JSONEncodeError:
        return None
    if len(data) > max_bytes or data.find(b"\\") != -1 or data.find(b"null") != -1:
        return None
    return data


def compile_validator(task: str, spec: str | Mapping[str, Any]) -> Validator:
    """Compile the validator configured for ``task``; call this once, not per payload.

    ``spec`` is an inline JSON Schema (a mapping) or an import path ``"package.module:attr"`` to a
    pydantic v2 model class, a ``pydantic.TypeAdapter`` instance, or a callable that raises (an
    optional ``field`` attribute on the exception names the field) or returns ``False`` to refuse.

    The returned callable raises :class:`PayloadError` naming ``task`` and the failing field.

    Raises:
        ConfigError: naming ``validation.tasks.<task>`` when the schema or import path is unusable.
    """
    key = f"validation.tasks.{task}"
    if isinstance(spec, Mapping):
        return _compile_json_schema(task, key, spec)
    if isinstance(spec, str):
        return _compile_import_path(task, key, spec)
    raise ConfigError(
        f"{key}: expected a JSON Schema object or an import path 'module:attr',"
        f" got {type(spec).__name__}"
    )


class PayloadGate:
    """Validates (when the task has a validator) and encodes every payload at enqueue.

    Built once from configuration; every validator is compiled in the constructor, so a bad
    schema or import path fails at startup, with all of them in one :class:`ConfigError`.
    """

    __slots__ = ("_max_payload_bytes", "_validators")

    def __init__(
        self, max_payload_bytes: int, schemas: Mapping[str, str | Mapping[str, Any]]
    ) -> None:
        problems: list[str] = []
        if (
            not isinstance(max_payload_bytes, int)
            or isinstance(max_payload_bytes, bool)
            or max_payload_bytes < 1
        ):
            problems.append(
                f"max_payload_bytes: must be a positive integer, got {max_payload_bytes!r}"
            )
        validators: dict[str, Validator] = {}
        for task, spec in schemas.items():
            try:
                validators[task] = compile_validator(task, spec)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        self._max_payload_bytes = max_payload_bytes
        self._validators = validators
        logger.debug(
            "payload gate built: %d task validators, max %d bytes",
            len(validators),
            max_payload_bytes,
            extra={"action": "build_payload_gate"},
        )

    def check(self, task: str, payload: object) -> bytes:
        """Validate ``payload`` for ``task``, then return its JSON encoding.

        Raises:
            PayloadError: the payload is refused; names the task and the failing field.
        """
        validator = self._validators.get(task)
        if validator is not None:
            validator(payload)
        return encode(task, payload, self._max_payload_bytes)

    def encode_proven(self, value: object) -> bytes | None:
        """``encode_proven`` under this gate's size limit (see there)."""
        return encode_proven(value, self._max_payload_bytes)

    def has_validator(self, task: str) -> bool:
        """Whether a validator is configured for ``task``."""
        return task in self._validators


# -- encoding: finding the offending field ------------------------------------------------------
# These walks run only once a problem is known or suspected, so they favour clarity over speed.


def _unserialisable(task: str, payload: object, exc: Exception) -> PayloadError:
    reason = str(exc)
    if reason == _ORJSON_RECURSION_MESSAGE:
        # Deliberately no walk for a field: the path would be 254 levels long and say nothing.
        return PayloadError(
            task,
            f"nested more than {_ORJSON_MAX_DEPTH} levels deep, or contains a reference cycle",
        )
    if isinstance(exc.__cause__, TypeError):
        reason = str(exc.__cause__)  # _encode_time's own words (a naive datetime, ...)
    path = _find(payload, _fails_to_encode, _key_fails_to_encode)
    return PayloadError(task, f"cannot be encoded as JSON: {reason}", _format_path(path or ()))


def _has_non_finite(root: object) -> bool:
    """Fast yes/no search for NaN or ±Infinity; :func:`_find` then names the field.

    ``null`` is common in real payloads, so this is on the hot path for many of them: no paths
    are built and plain containers are flattened at C speed. No cycle guard is needed, because
    orjson has just serialised the object, so the walk is bounded by the size of its output.
    """
    # Any: exact-type tests (faster than isinstance) do not narrow for mypy.
    stack: list[Any] = [root]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return True
        elif kind is dict:
            stack.extend(value.values())
        elif kind is list or kind is tuple:
            stack.extend(value)
        elif kind not in _LEAF_TYPES and _find(value, _is_non_finite, _never) is not None:
            # Subclasses, dataclasses, enums: rare, so the thorough walk is fine.
            return True
    return False


def _find(
    root: object,
    is_bad: Callable[[object], bool],
    is_bad_key: Callable[[object], bool],
) -> _Path | None:
    """Path of the first bad value or dict key (in document order), or None if there is none.

    Descends only where orjson does. Iterative, so deep payloads cannot raise RecursionError; each
    container is entered once and never below orjson's depth limit, so shared sub-objects and
    cycles cannot make it loop or run long.
    """
    stack: list[tuple[object, _Path]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if is_bad(value):
            return path
        if type(value) in _LEAF_TYPES:
            continue  # most values: skip the slower container checks below
        if isinstance(value, enum.Enum):
            # orjson writes a member as its value, which may itself be a container.
            if _first_visit(value, seen):
                stack.append((value.value, path))
            continue
        if not _is_container(value) or len(path) >= _ORJSON_MAX_DEPTH:
            continue
        if not _first_visit(value, seen):
            continue
        pending: list[tuple[object, _Path]]
        if isinstance(value, dict):
            pending = []
            for key, child in value.items():
                if is_bad_key(key):
                    # A key that is not a str cannot be a path part: point at its dict instead.
                    return (*path, key) if isinstance(key, str) else path
                pending.append((child, (*path, key)))
        elif isinstance(value, list) or type(value) is tuple:
            pending = [(child, (*path, index)) for index, child in enumerate(value)]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            # Like orjson: __dict__ when there is one (extra attributes included), else the
            # fields; names starting with "_" are never written.
            names = (
                list(vars(value))
                if hasattr(value, "__dict__")
                else [f.name for f in dataclasses.fields(value)]
            )
            pending = [(getattr(value, n), (*path, n)) for n in names if not n.startswith("_")]
        else:
            continue
        stack.extend(reversed(pending))
    return None


def _is_container(value: object) -> bool:
    """Whether orjson serialises ``value`` by recursing into it."""
    return (
        isinstance(value, dict | list)
        or type(value) is tuple
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
    )


def _first_visit(value: object, seen: set[int]) -> bool:
    if id(value) in seen:
        return False
    seen.add(id(value))
    return True


def _has_nul(value: object) -> bool:
    return isinstance(value, str) and "\x00" in value


def _key_has_nul(key: object) -> bool:
    return isinstance(key, str) and "\x00" in key


def _is_non_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _never(_key: object) -> bool:
    return False


def _fails_to_encode(value: object) -> bool:
    if _is_container(value) or isinstance(value, enum.Enum):
        return False  # judged by what they contain
    try:
        _dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def _key_fails_to_encode(key: object) -> bool:
    return not isinstance(key, str) or _fails_to_encode(key)


def _format_path(parts: tuple[Any, ...]) -> str | None:
    """``("items", 3, "price")`` -> ``items[3].price``; keys that are not identifiers are quoted."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif isinstance(part, str) and part.isidentifier():
            out.append(f".{part}" if out else part)
        else:
            # json.dumps escapes NUL and lone surrogates, so the path itself is always printable.
            out.append(f"[{json.dumps(str(part))}]")
    return "".join(out) or None


# -- validators ---------------------------------------------------------------------------------


def _compile_json_schema(task: str, key: str, spec: Mapping[str, Any]) -> Validator:
    try:
        # use_default=False: fastjsonschema would otherwise write defaults into the caller's dict.
        compiled: Callable[[object], object] = fastjsonschema.compile(
            _thaw_schema(spec), use_default=False
        )
    except Exception as exc:  # fastjsonschema also raises re.error, AttributeError, ...
        raise ConfigError(f"{key}: invalid JSON Schema: {exc}") from exc

    def validate(payload: object) -> None:
        try:
            compiled(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            name: str = exc.name or "data"
            # fastjsonschema names the root "data": data.items[0] -> items[0], data -> no field.
            field = name.removeprefix("data").removeprefix(".") or None
            message: str = exc.message or str(exc)
            if message.startswith(name):
                message = (field or "payload") + message[len(name) :]
            raise PayloadError(task, message, field) from None

    return validate


def _thaw_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict copy: fastjsonschema wants dicts, and later edits to spec must not leak in."""
    return {key: _thaw(value) for key, value in spec.items()}


def _thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(item) for item in value]
    return value


def _compile_import_path(task: str, key: str, path: str) -> Validator:
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(
            f"{key}: import path {shown(path)} is not of the form 'package.module:attr'")
    try:
        target: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
    except Exception as exc:  # any failure while importing user code is a config problem
        raise ConfigError(
            f"{key}: cannot import {shown(path)}: {type(exc).__name__}: {exc}") from exc

    # Duck typing keeps pydantic optional: it is never imported here.
    model_validate = getattr(target, "model_validate", None)
    if isinstance(target, type) and callable(model_validate):
        return _pydantic_validator(task, model_validate)
    validate_python = getattr(target, "validate_python", None)
    if not isinstance(target, type) and callable(validate_python):
        return _pydantic_validator(task, validate_python)
    if callable(target):
        return _callable_validator(task, path, target)
    raise ConfigError(
        f"{key}: {shown(path)} is a {type(target).__name__}, not a pydantic model, TypeAdapter"
        " or callable"
    )


def _pydantic_validator(task: str, validate_fn: Callable[[object], object]) -> Validator:
    def validate(payload: object) -> None:
        try:
            validate_fn(payload)
        except PayloadError:
            raise
        except Exception as exc:
            errors_fn = getattr(exc, "errors", None)
            if not callable(errors_fn):
                # Not a ValidationError: a model validator raised something pydantic passes on.
                raise _from_exception(task, exc) from exc
            # Not chained: a ValidationError's text quotes the input, which must stay out of logs.
            raise _from_validation_errors(task, errors_fn) from None

    return validate


def _from_validation_errors(task: str, errors_fn: Callable[..., Any]) -> PayloadError:
    # include_input=False: the offending input must not end up in messages or logs.
    errors: list[dict[str, Any]] = errors_fn(include_url=False, include_input=False)
    if not errors:
        return PayloadError(task, "rejected by pydantic")
    first = errors[0]
    message = str(first.get("msg", "invalid"))
    if len(errors) > 1:
        message += f" ({len(errors)} errors in total)"
    return PayloadError(task, message, _format_path(tuple(first.get("loc", ()))))


def _callable_validator(task: str, path: str, fn: Callable[[object], object]) -> Validator:
    def validate(payload: object) -> None:
        try:
            result = fn(payload)
        except PayloadError:
            raise
        except Exception as exc:
            raise _from_exception(task, exc) from exc
        if result is False:
            raise PayloadError(task, f"rejected by validator {path}")

    return validate


def _from_exception(task: str, exc: Exception) -> PayloadError:
    field = getattr(exc, "field", None)
    return PayloadError(task, str(exc) or type(exc).__name__, None if field is None else str(field))
