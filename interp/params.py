"""Typed analysis parameters: one frozen dataclass per analysis, checked before any model is loaded.

An analysis declares its parameters as a subclass of ``Params`` whose fields are made with ``param``::

    @dataclass(frozen=True)
    class SinksParams(Params):
        n_samples: int = param(100, "samples per condition", ge=1)
        eps: float = param(0.3, "sink threshold ε", gt=0, lt=1)
        conditions: tuple[str, ...] = param(("prose", "random"), "sample sets", choices=("prose", "random"))
        streaming: StreamingParams = sub(StreamingParams)       # a nested table, [params.sinks.streaming]

Supported field types: ``int``, ``float`` (an int is accepted and converted), ``bool``, ``str``, ``X | None``,
``tuple[T, ...]`` (a TOML array; stored as a tuple) and a nested ``Params`` (a TOML table, or a bool as a
shorthand for its ``enabled`` field). ``from_dict`` rejects unknown keys and wrong types; ``validate`` checks
every documented range/choice and then runs ``check`` (an analysis's own cross-field rules); ``check_model``
runs the rules that need the loaded model (e.g. a length against its context) before any analysis starts.
Every failure is a ``ParamError`` whose message is one line naming the key, the value and what is allowed.
Tested in ``tests/unit/test_params.py`` and through the CLI in ``tests/integration/test_cli_params.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields

_HINTS: dict = {}


class ParamError(ValueError):
    """A bad parameter value or key (one line: the key, the value, what is allowed)."""


def param(default, doc: str, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A documented parameter field. ``ge``/``gt``/``le``/``lt`` bound numbers (each element of a tuple);
    ``choices`` lists the allowed values (of each element of a tuple)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None}
    return field(default=default, metadata=meta)


def sub(cls, doc: str = "", **overrides):
    """A nested parameter group (``[params.<analysis>.<name>]`` in TOML)."""
    return field(default_factory=lambda: cls(**overrides), metadata={"doc": doc or (cls.__doc__ or "").strip()})


def _show(v) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def _type_name(tp) -> str:
    if isinstance(tp, type) and issubclass(tp, Params):
        return "a table"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "none" for a in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an int", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _convert(tp, value, key: str):
    """``value`` (from TOML / the CLI / Python) as type ``tp``, or ``ParamError``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _convert(a, value, key)
            except ParamError:
                pass
        raise ParamError(f"{key} = {_show(value)}: expected {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamError(f"{key} = {_show(value)}: expected {_type_name(tp)}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, Params):
        return tp.from_dict(value, where=key) if not isinstance(value, tp) else value
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}[tp]
    if not ok(value):
        raise ParamError(f"{key} = {_show(value)}: expected {_type_name(tp)}, got {type(value).__name__}")
    return float(value) if tp is float else value


def _check_bounds(key: str, value, meta: dict) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if v is None or isinstance(v, Params):
            continue
        if meta.get("choices") and v not in meta["choices"]:
            raise ParamError(f"{key} = {_show(value)}: {v!r} is not allowed; choose from "
                             f"{', '.join(map(str, meta['choices']))}")
        for op, bad, word in (("ge", lambda a, b: a < b, ">="), ("gt", lambda a, b: a <= b, ">"),
                              ("le", lambda a, b: a > b, "<="), ("lt", lambda a, b: a >= b, "<")):
            if meta.get(op) is not None and isinstance(v, (int, float)) and bad(v, meta[op]):
                raise ParamError(f"{key} = {_show(value)}: must be {word} {meta[op]}")


@dataclass(frozen=True)
class Params:
    """Base class of every analysis's parameters (see the module docstring)."""

    def __post_init__(self):  # normalise Python-side values (lists → tuples, ints → floats); errors: validate
        hints = self.hints()
        for f in fields(self):
            v = getattr(self, f.name)
            try:
                c = _convert(hints[f.name], v, f.name)
            except ParamError:
                continue
            if c is not v:
                object.__setattr__(self, f.name, c)

    @classmethod
    def hints(cls) -> dict:
        if cls not in _HINTS:
            _HINTS[cls] = typing.get_type_hints(cls)
        return _HINTS[cls]

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d, *, where: str = ""):
        """An instance from a mapping of overrides (unknown keys and wrong types raise ``ParamError``).
        A bool stands for ``{"enabled": bool}`` when the class has an ``enabled`` field."""
        where = where or cls.__name__
        if isinstance(d, bool) and "enabled" in cls.keys():
            d = {"enabled": d}
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ParamError(f"{where} = {_show(d)}: expected a table of parameters ({', '.join(cls.keys())})")
        unknown = sorted(set(d) - set(cls.keys()))
        if unknown:
            raise ParamError(f"{where}: unknown parameter {', '.join(map(repr, unknown))}; valid keys: "
                             f"{', '.join(cls.keys()) or '(none)'}")
        hints = cls.hints()
        kw = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in d.items()}
        return cls(**kw)

    @classmethod
    def coerce(cls, p, *, where: str = ""):
        """``None`` → defaults, a dict → ``from_dict``, an instance → itself; always validated."""
        if p is None:
            p = cls()
        elif not isinstance(p, cls):
            p = cls.from_dict(p, where=where)
        p.validate(where)
        return p

    def validate(self, where: str = ""):
        """Check every field's type, range and choices, then the class's own ``check``; returns ``self``."""
        where = where or type(self).__name__
        hints = self.hints()
        for f in fields(self):
            key, value = f"{where}.{f.name}", getattr(self, f.name)
            _convert(hints[f.name], value, key)
            if isinstance(value, Params):
                value.validate(key)
            _check_bounds(key, value, f.metadata)
        self.check(where)
        return self

    def check(self, where: str) -> None:
        """Cross-field rules of one analysis (override; raise ``ParamError`` naming ``where.<key>``)."""

    def check_model(self, model, where: str = "") -> None:
        """Rules that need the loaded model (override; the default recurses into enabled sub-groups)."""
        where = where or type(self).__name__
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Params) and getattr(v, "enabled", True):
                v.check_model(model, f"{where}.{f.name}")

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists): what the manifest records and the resume hash reads."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Params) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def describe(cls, prefix: str = "") -> list[str]:
        """One line per parameter: ``key (type, default): doc [allowed]``, nested groups flattened."""
        lines = []
        hints, default = cls.hints(), cls()
        for f in fields(cls):
            key = f"{prefix}{f.name}"
            value = getattr(default, f.name)
            if isinstance(value, Params):
                lines += type(value).describe(f"{key}.")
                continue
            m = f.metadata
            allowed = [f"{w} {m[op]}" for op, w in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                       if m.get(op) is not None]
            if m.get("choices"):
                allowed.append("one of " + ", ".join(map(str, m["choices"])))
            tail = f" [{'; '.join(allowed)}]" if allowed else ""
            lines.append(f"{key} ({_type_name(hints[f.name])}, default {_show(value)}): {m.get('doc', '')}{tail}")
        return lines


@dataclass(frozen=True)
class NoParams(Params):
    """An analysis without parameters."""


def check_context(model, key: str, n: int, what: str = "tokens", *, value=None, hint: str | None = None) -> None:
    """``ParamError`` when ``n`` tokens do not fit ``model``'s context (``shape.n_ctx``; 0 = unknown).
    ``value``: what the user set (default ``n``); ``hint``: what to choose instead."""
    n_ctx = model.shape.n_ctx
    if n_ctx and n > n_ctx:
        raise ParamError(f"{key} = {_show(n if value is None else value)}: {n} {what} do not fit "
                         f"{model.name}'s context of {n_ctx} tokens; {hint or f'choose at most {n_ctx}'}")
