"""A task's parameters as a payload: checked at `defer`, checked again when it runs.

A task's payload is its keyword arguments as a JSON object. The parameters'
annotations become one msgspec struct type, so both directions use the same
rules:
- `defer` checks the Python values strictly (a `str` for a `datetime`
  parameter is refused, not parsed) and raises `TypeError` naming the
  argument before anything is written; the payload is msgspec's JSON of the
  given arguments (datetimes as RFC 3339, enums by value, structs and
  dataclasses as objects). Defaults are not stored: they apply when the task
  runs.
- the daemon converts the stored JSON back to the annotated types (parsing
  datetimes, building structs and dataclasses) and fails the attempt with
  `PayloadMismatch` naming the argument when it does not fit (a payload
  written by hand, by another language, or by an older version of the task).
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import inspect
import re
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from jobengine.domain.errors import PayloadMismatch

#: Names a task may not use for a parameter: `defer(..., connection=conn)` takes it.
RESERVED = frozenset({"connection"})

#: Python values of these types must be given as such at `defer` (never parsed from str).
_STRICT_TYPES = (dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, decimal.Decimal,
                 bytes, bytearray, memoryview)

_PATH = re.compile(r" - at `\$\.([^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")

_encode = msgspec.json.Encoder().encode


class Arguments:
    """The payload model of one task function (built on first use)."""

    def __init__(self, func: Callable[..., Any], task: str) -> None:
        self.task = task
        self.signature = inspect.signature(func)
        #: the name of a `**kwargs` parameter: it takes payload keys no parameter names
        self.rest: str | None = None
        for p in self.signature.parameters.values():
            if p.kind is p.VAR_POSITIONAL:
                raise TypeError(f"task {task}: *{p.name} cannot hold a payload "
                                "(a payload is keyword arguments)")
            if p.kind is p.POSITIONAL_ONLY:
                raise TypeError(f"task {task}: parameter {p.name!r} is positional-only; "
                                "a payload is keyword arguments")
            if p.name in RESERVED:
                raise TypeError(f"task {task}: a parameter cannot be named {p.name!r} "
                                "(defer(..., connection=...) takes that name)")
            if p.kind is p.VAR_KEYWORD:
                self.rest = p.name
        self._func = func
        self._model: type[msgspec.Struct] | None = None
        #: the named parameters, in order
        self.names = tuple(n for n, p in self.signature.parameters.items()
                           if p.kind is not p.VAR_KEYWORD)

    @property
    def model(self) -> type[msgspec.Struct]:
        """The struct type of the named parameters (annotations resolved on first use)."""
        if self._model is None:
            try:
                hints = typing.get_type_hints(self._func)
            except Exception as exc:  # a forward reference that does not resolve
                raise TypeError(f"task {self.task}: cannot resolve its annotations: {exc}") from exc
            fields: list[Any] = []
            for p in self.signature.parameters.values():
                if p.kind is p.VAR_KEYWORD:
                    continue
                kind = hints.get(p.name, Any)
                if p.default is p.empty:
                    fields.append((p.name, kind))
                else:
                    fields.append((p.name, kind, _default(p.default)))
            self._model = msgspec.defstruct(
                f"{self.task}.arguments", fields, kw_only=True,
                forbid_unknown_fields=self.rest is None,
            )
        return self._model

    # -- defer -------------------------------------------------------------------

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The payload of a call `task(*args, **kwargs)`, or `TypeError` naming the argument."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.task}: {exc}") from None
        given = dict(bound.arguments)
        if self.rest is not None:
            given.update(given.pop(self.rest, {}))
        self.check(given)
        return given

    def check(self, given: Mapping[str, Any]) -> None:
        """Refuse Python values that do not fit the annotations (`TypeError` naming one)."""
        try:
            msgspec.convert(self._known(given), self.model, builtin_types=_STRICT_TYPES)
        except msgspec.ValidationError as exc:
            raise TypeError(f"{self.task}: {_explain(str(exc))}") from None

    def encode(self, payloads: list[dict[str, Any]]) -> bytes:
        """The payloads as one JSON array (`TypeError` naming what cannot be JSON)."""
        try:
            return _encode(payloads)
        except (TypeError, ValueError, OverflowError):
            for payload in payloads:
                for name, value in payload.items():
                    try:
                        _encode(value)
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise TypeError(f"{self.task}: argument {name!r} cannot be stored "
                                        f"as JSON: {exc}") from None
            raise

    # -- run ---------------------------------------------------------------------

    def load(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for a stored payload, or `PayloadMismatch` naming one."""
        try:
            values = msgspec.convert(self._known(payload), self.model)
        except msgspec.ValidationError as exc:
            raise PayloadMismatch(
                f"the payload does not fit task {self.task}: {_explain(str(exc))}") from None
        kwargs = {name: getattr(values, name) for name in self.names}
        if self.rest is not None:
            kwargs.update((k, v) for k, v in payload.items() if k not in kwargs)
        return kwargs

    def _known(self, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """The values of named parameters (a `**kwargs` task takes the rest as they are)."""
        if self.rest is None:
            return values
        return {k: v for k, v in values.items() if k in self.names}


def _default(value: Any) -> Any:
    """A parameter's default as a struct field default (mutable ones copied per use)."""
    if isinstance(value, (list, dict, set)) and value:
        return msgspec.field(default_factory=lambda: copy.deepcopy(value))
    return value


def _explain(message: str) -> str:
    """msgspec's message, put in terms of the task's arguments."""
    if m := _MISSING.match(message):
        return f"missing argument {m.group(1)!r}"
    if m := _UNKNOWN.match(message):
        return f"unexpected argument {m.group(1)!r}"
    if m := _PATH.search(message):
        path = m.group(1)
        name = re.split(r"[.\[]", path, maxsplit=1)[0]
        where = f" (at {path})" if path != name else ""
        return f"argument {name!r}{where}: {message[: m.start()]}"
    return message
