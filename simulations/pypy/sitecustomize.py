"""Python 3.9 (Debian's PyPy) shims for the pure model check: StrEnum and dataclass(slots=True)."""

import dataclasses
import enum

if not hasattr(enum, "StrEnum"):

    class StrEnum(str, enum.Enum):
        def __str__(self):
            return self.value

        @staticmethod
        def _generate_next_value_(name, start, count, last_values):
            return name.lower()

    enum.StrEnum = StrEnum

_dataclass = dataclasses.dataclass


def _add_slots(cls):
    """``cls`` rebuilt with ``__slots__`` of its fields, as 3.10's ``slots=True`` does."""
    names = tuple(f.name for f in dataclasses.fields(cls))
    namespace = {k: v for k, v in cls.__dict__.items() if k not in names and k not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = names
    new = type(cls)(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new


def dataclass(cls=None, /, **kw):
    slots = kw.pop("slots", False)
    if kw.pop("kw_only", False) or not kw.pop("match_args", True):
        raise TypeError("the 3.9 shim has no kw_only and keeps match_args")

    def wrap(c):
        c = _dataclass(c, **kw)
        return _add_slots(c) if slots else c

    return wrap if cls is None else wrap(cls)


dataclasses.dataclass = dataclass
