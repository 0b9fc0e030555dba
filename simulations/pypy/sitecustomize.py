"""Python 3.9 (Debian's PyPy) shims for the pure model check: StrEnum and dataclass(slots=True)."""
import dataclasses, enum

if not hasattr(enum, "StrEnum"):
    class StrEnum(str, enum.Enum):
        def __str__(self):
            return self.value
        @staticmethod
        def _generate_next_value_(name, start, count, last_values):
            return name.lower()
    enum.StrEnum = StrEnum

_orig = dataclasses.dataclass

def _add_slots(cls):
    names = tuple(f.name for f in dataclasses.fields(cls))
    d = dict(cls.__dict__)
    d["__slots__"] = names
    for n in names:
        d.pop(n, None)
    d.pop("__dict__", None)
    d.pop("__weakref__", None)
    qual = getattr(cls, "__qualname__", None)
    new = type(cls)(cls.__name__, cls.__bases__, d)
    if qual is not None:
        new.__qualname__ = qual
    return new

def dataclass(cls=None, /, **kw):
    slots = kw.pop("slots", False)
    kw.pop("kw_only", None); kw.pop("match_args", None)
    def wrap(c):
        c = _orig(c, **kw)
        return _add_slots(c) if slots else c
    return wrap if cls is None else wrap(cls)

dataclasses.dataclass = dataclass
