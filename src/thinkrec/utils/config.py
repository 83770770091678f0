"""Typed configs: dataclasses built from YAML with ``--set a.b=c`` overrides and field-naming errors.

Each field declares its range or choices next to it with :func:`spec` (kept in the field's ``metadata``, so
values alone make :func:`config_hash`), and :func:`validate` walks a (nested) config and returns every error as
``"dotted.name: message (got X)"``::

    @dataclass
    class BeamConfig:
        beam: int = spec(20, ge=1, doc="beams kept per step")
        device: str = spec("cpu", check=device_error)
        models: list[str] = spec(default_factory=lambda: ["tiger"], choices=lambda: RETRIEVERS.names(), min_len=1)

        def _checks(self) -> list[tuple[str, str]]:  # combinations: (field, message)
            return [("beam", "...")] if ... else []

Bounds and choices apply to each element of a list (``ks[1]``) and each value of a mapping (``quotas.sasrec``);
a bounded number must be finite (no NaN, no ±inf); ``None`` passes (an optional field's type already allows it). ``choices`` may be a callable returning the names
(registry keys), looked up only at validation (no import cycles). ``check(value)`` returns an error message, or
None / True when the value is fine. ``exists=True`` marks a path that must exist, and ``_path_checks(self)`` the
same for combinations; both run only under ``validate(..., paths=True)`` (before a run starts work, not when a
trained run's config is read back).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from thinkrec.errors import ConfigError

T = TypeVar("T")

#: The key of a field's ``metadata`` holding its :class:`Constraint`.
META_KEY = "thinkrec.constraint"
_MISSING: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What :func:`spec` declares for one field (see the module docstring)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    check: Callable[[Any], str | bool | None] | None = None
    min_len: int | None = None
    exists: bool = False
    doc: str | None = None

    def range_text(self) -> str | None:
        lo = (f"[{_num(self.ge)}", self.ge) if self.ge is not None else (f"({_num(self.gt)}", self.gt) \
            if self.gt is not None else None
        hi = (f"{_num(self.le)}]", self.le) if self.le is not None else (f"{_num(self.lt)})", self.lt) \
            if self.lt is not None else None
        if lo and hi:
            return f"must be in {lo[0]}, {hi[0]}"
        if lo:
            return f"must be {'≥' if self.ge is not None else '>'} {_num(lo[1])}"
        if hi:
            return f"must be {'≤' if self.le is not None else '<'} {_num(hi[1])}"
        return None

    def choice_names(self) -> list[Any] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def element_errors(self, value: Any, dotted: str) -> list[str]:
        """Bounds and choices of one scalar value."""
        if value is None:
            return []
        errors = []
        rng = self.range_text()
        if rng is not None and isinstance(value, int | float) and not isinstance(value, bool):
            v = value  # an int stays exact (a huge one does not fit a float)
            bad = ((isinstance(v, float) and not math.isfinite(v))
                   or (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                   or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt))
            if bad:
                errors.append(f"{dotted}: {rng} (got {value!r})")
        names = self.choice_names()
        if names is not None and value not in names:
            errors.append(f"{dotted}: must be one of {', '.join(map(str, names))} (got {value!r})")
        return errors

    def errors(self, value: Any, dotted: str, paths: bool = False) -> list[str]:
        if value is None:
            return []
        errors: list[str] = []
        if isinstance(value, list | tuple):
            if self.min_len is not None and len(value) < self.min_len:
                what = "one entry" if self.min_len == 1 else f"{self.min_len} entries"
                errors.append(f"{dotted}: must hold at least {what} (got {list(value)!r})")
            for i, v in enumerate(value):
                errors += self.element_errors(v, f"{dotted}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                errors += self.element_errors(v, f"{dotted}.{k}")
        else:
            errors += self.element_errors(value, dotted)
        if self.check is not None and not errors:
            res = self.check(value)
            if res is False:
                errors.append(f"{dotted}: invalid value (got {value!r})")
            elif isinstance(res, str):
                errors.append(f"{dotted}: {res} (got {value!r})")
        if paths and self.exists and isinstance(value, str | Path) and str(value) and not Path(value).expanduser().exists():
            errors.append(f"{dotted}: no such file or folder (got {str(value)!r})")
        return errors


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def spec(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] = _MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    check: Callable[[Any], str | bool | None] | None = None,
    min_len: int | None = None,
    exists: bool = False,
    doc: str | None = None,
) -> Any:
    """A dataclass field with its constraints in ``metadata`` (see the module docstring); the value alone is what
    :func:`to_dict` and :func:`config_hash` see."""
    if isinstance(choices, str):
        raise TypeError("spec(choices=...) takes a collection of names, not a string")
    meta = {META_KEY: Constraint(ge, gt, le, lt, tuple(choices) if choices is not None and not callable(choices)
                                 else choices, check, min_len, exists, doc)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def constraint_of(cls_or_obj: Any, name: str) -> Constraint | None:
    """The constraint :func:`spec` declared for field ``name`` (None without one)."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get(META_KEY)
    raise KeyError(name)


def _join(where: str, name: str) -> str:
    if not name:
        return where
    return f"{where}.{name}" if where else name


def validate(obj: Any, where: str = "", paths: bool = False) -> list[str]:
    """Every constraint error of dataclass instance ``obj`` and the dataclasses inside it, each as
    ``"dotted.name: message (got X)"`` (``where`` prefixes the names); then its ``_checks()`` (combinations of
    fields) and, with ``paths``, the ``exists`` fields and ``_path_checks()``. An empty list: the config is valid."""
    errors: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        dotted = _join(where, f.name)
        c = f.metadata.get(META_KEY)
        if c is not None:
            errors += c.errors(value, dotted, paths)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            errors += validate(value, dotted, paths)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    errors += validate(v, f"{dotted}[{i}]", paths)
    hooks = ["_checks"] + (["_path_checks"] if paths else [])
    for hook in hooks:
        fn = getattr(obj, hook, None)
        if not callable(fn):
            continue
        try:
            found = list(fn())
        except Exception:
            if errors:  # a combination of values already reported as wrong (e.g. a division by n_heads = 0)
                continue
            raise
        errors += [f"{_join(where, name)}: {msg}" for name, msg in found]
    return errors


def check_valid(obj: T, where: str = "", source: str | None = None, paths: bool = False) -> T:
    """``obj`` itself if :func:`validate` finds nothing, else one :class:`ConfigError` listing every error."""
    errors = validate(obj, where, paths)
    if errors:
        raise ConfigError(errors, source)
    return obj


def split_error(message: str) -> tuple[str, str]:
    """``"a.b: text"`` → ``("a.b", "text")`` (for ``_checks`` reporting another validator's messages)."""
    name, sep, text = message.partition(": ")
    return (name, text) if sep and " " not in name else ("", message)


# ---------------------------------------------------------------------------------------------- common checks
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
DEVICE_NAMES = "cpu, cuda, cuda:N, mps"


def device_error(value: Any) -> str | None:
    """None for a device name torch knows here (``cpu``, ``cuda``, ``cuda:N``, ``mps``), else the message."""
    if isinstance(value, str) and _DEVICE.fullmatch(value):
        return None
    return f"must be a device: {DEVICE_NAMES}"


def non_empty(value: Any) -> str | None:
    return None if str(value).strip() else "must not be empty"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str, errors: list[str] | None = None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where, errors)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{where}: number out of range (got an integer of {len(str(abs(value)))} digits)") from None
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "", errors: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys and bad types name the field.

    Every key is tried: one :class:`ConfigError` lists all that are wrong. With an ``errors`` list, they are
    appended there instead and the wrong keys keep their defaults (so the rest can still be validated)."""
    own: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    if not isinstance(data, dict | type(None)):
        own.append(f"{where or cls.__name__}: expected a mapping, got {data!r}")
        data = {}
    for key, value in (data or {}).items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            own.append(f"{dotted}: unknown config key (known: {', '.join(fields)})")
            continue
        try:
            kwargs[key] = _coerce(value, hints[key], dotted, own)
        except ConfigError as exc:
            own += exc.errors
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ check (a ConfigError's names are relative to cls)
        if isinstance(exc, ConfigError):
            own += [f"{where}.{e}" if where else e for e in exc.errors]
        else:
            own.append(f"{where or cls.__name__}: {exc}")
        if errors is None:
            raise ConfigError(own) from None
        errors += own
        return cls()
    if own:
        if errors is None:
            raise ConfigError(own)
        errors += own
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception as exc:  # noqa: BLE001 - PyYAML raises YAMLError, and ValueError / AttributeError (bad dates,
        # `!!timestamp x`), RecursionError (deep nesting), ...: all mean a bad value in the user's string
        raise ConfigError(f"--set {assignment!r}: invalid YAML value ({type(exc).__name__}: {exc})") from None
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = value
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML mapping; a top-level ``base: other.yaml`` (relative to this file) is read first and this file's
    keys are merged over it, section by section (presets extend a dataset's config without copying it)."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found" + (f" (the base of {seen[-1]})" if seen else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, ValueError, AttributeError, TypeError, RecursionError) as exc:  # see set_dotted
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: must be the path of another config file (got {base!r})")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base} includes itself")
    return _deep_merge(_read_yaml_file(base_path, (*seen, path.resolve())), data)


def read_config_data(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping: YAML file (if any, with its ``base:`` chain) ← ``--set`` overrides."""
    data: dict[str, Any] = _read_yaml_file(Path(path)) if path is not None else {}
    for item in overrides or []:
        set_dotted(data, item)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults ← YAML file ← ``--set`` overrides, validated into dataclass ``cls`` (types, then :func:`validate`;
    one :class:`ConfigError` lists every error)."""
    data = read_config_data(path, overrides)
    errors: list[str] = []
    obj = from_dict(cls, data, errors=errors)
    errors += validate(obj)
    if errors:
        raise ConfigError(errors, str(path or "<defaults>"))
    return obj


def config_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(to_dict(obj), sort_keys=True, default=str).encode()).hexdigest()[:12]


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
