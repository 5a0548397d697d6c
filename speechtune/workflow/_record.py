"""Frozen records read from and written to JSON unchanged (the base of ``state.json``'s records).

A record is a frozen, keyword-only dataclass that subclasses :class:`Record`. Its fields are its
JSON keys, in order; :meth:`Record.from_dict` checks each value against the field's annotation
(``str``, ``int``, ``float``, ``bool``, ``Any``, ``X | None``, ``tuple[X, ...]``,
``Mapping[str, X]``, another record, :class:`~speechtune.metrics.CostRecord`,
:class:`~speechtune.metrics.CostModel`) and :meth:`Record.to_dict` writes the same JSON back:

* keys this version does not know are kept in ``extra`` and written back;
* a field with ``metadata=OPTIONAL`` is written only when it is set, so that a key the stage
  code adds only sometimes stays absent; an explicit ``null`` in the source is remembered
  (``nulls``) and written back as ``null``.

Updates are copies: ``dataclasses.replace(record, status="done")``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Self, Union

from speechtune.metrics import CostModel, CostRecord

_OPTIONAL = "speechtune.optional"
_KEY = "speechtune.key"


#: Field metadata of an optional key: ``field(default=None, metadata=OPTIONAL)`` is written to JSON
#: only when it is set, or when its source held a ``null``.
OPTIONAL: Mapping[str, Any] = MappingProxyType({_OPTIONAL: True})


def json_key(key: str) -> Mapping[str, Any]:
    """Field metadata that stores the field under another JSON key (one that would shadow a builtin)."""
    return MappingProxyType({_KEY: key})


class RecordError(ValueError):
    """JSON that does not fit a record; the message says where (``candidates[0].values``) and why."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem, self.where = problem, where

    def within(self, key: str) -> RecordError:
        """The same error, one level up (``key`` is ``name`` or ``[i]``)."""
        inner = self.where if not self.where or self.where.startswith("[") else "." + self.where
        return RecordError(self.problem, key + inner)


class _Field(NamedTuple):
    name: str
    key: str
    hint: Any
    optional: bool
    required: bool


@dataclass(frozen=True, kw_only=True)
class Record:
    """The base of the workflow's records (see the module docstring)."""

    #: Keys this version does not know, written back as they were read.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: Optional fields (:data:`OPTIONAL`) that the source held as ``null`` (written back as ``null``).
    nulls: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The record of a JSON object.

        Raises:
            RecordError: a value of the wrong type, or a required key missing.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"expected an object, got {_kind(data)}")
        values: dict[str, Any] = {}
        nulls: set[str] = set()
        for f in _fields(cls):
            if f.key not in data:
                if f.required:
                    raise RecordError("missing", f.key)
                continue
            value = data[f.key]
            if value is None and f.optional:
                nulls.add(f.name)
                continue
            try:
                values[f.name] = _load(f.hint, value)
            except RecordError as exc:
                raise exc.within(f.key) from None
        known = {f.key for f in _fields(cls)}
        extra = {str(k): copy.deepcopy(v) for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, nulls=frozenset(nulls))

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object it was read from (new containers, nothing shared)."""
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if value is None and f.optional:
                if f.name in self.nulls:
                    out[f.key] = None
                continue
            out[f.key] = dump(value)
        out.update((k, dump(v)) for k, v in self.extra.items() if k not in out)
        return out


@dataclass(frozen=True)
class RawResult:
    """A stage result kept as read, because it is no typed record: empty, malformed, or of an unknown stage.

    It is written back unchanged; the report shows ``problem`` instead of the stage's facts.
    """

    data: Any
    problem: str = ""


def dump(value: Any) -> Any:
    """A record, cost or container as plain JSON data (records and costs as dicts, tuples as lists)."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, RawResult):
        return dump(value.data)
    if isinstance(value, CostRecord):
        return value.as_dict()
    if isinstance(value, CostModel):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    return value


_FIELDS: dict[type[Record], tuple[_Field, ...]] = {}


def _fields(cls: type[Record]) -> tuple[_Field, ...]:
    """The JSON fields of a record class (annotations resolved once per class)."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in ("extra", "nulls"):
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(
            _Field(
                f.name,
                f.metadata.get(_KEY, f.name),
                hints[f.name],
                bool(f.metadata.get(_OPTIONAL)),
                required,
            )
        )
    _FIELDS[cls] = tuple(out)
    return _FIELDS[cls]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _load(hint: Any, value: Any) -> Any:
    """``value`` checked against ``hint`` (records built, lists made tuples); RecordError when it does not fit."""
    if hint is Any:
        return copy.deepcopy(value)  # a record shares no mutable value with its source
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(hint)):
            return None
        for arm in arms[:-1]:
            try:
                return _load(arm, value)
            except RecordError:
                continue
        return _load(arms[-1], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"expected a list, got {_kind(value)}")
        item = typing.get_args(hint)[0]
        return tuple(_load_at(f"[{i}]", item, v) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise RecordError(f"expected an object, got {_kind(value)}")
        item = typing.get_args(hint)[1]
        return {str(k): _load_at(str(k), item, v) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value)
    if hint in (CostRecord, CostModel):
        return _load_cost(hint, value)
    if _fits(hint, value):
        return value
    raise RecordError(f"expected {getattr(hint, '__name__', hint)}, got {_kind(value)}")


def _load_at(where: str, hint: Any, value: Any) -> Any:
    try:
        return _load(hint, value)
    except RecordError as exc:
        raise exc.within(where) from None


def _fits(hint: Any, value: Any) -> bool:
    # JSON has one number type: an int is a float (written back as it was read); a bool is neither.
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return hint in (str, bool) and isinstance(value, hint)


def _load_cost(hint: type[CostRecord | CostModel], value: Any) -> CostRecord | CostModel:
    if not isinstance(value, Mapping):
        raise RecordError(f"expected an object, got {_kind(value)}")
    if hint is CostRecord:
        return CostRecord.from_dict(value)
    known = {f.name for f in dataclasses.fields(CostModel)}
    try:
        return CostModel(**{k: v for k, v in value.items() if k in known})
    except ValueError as exc:  # CostModel validates its numbers
        raise RecordError(str(exc)) from None
