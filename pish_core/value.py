"""``@value``: pish's immutable value types (the spec and its parts), as dataclasses that are cheap to define.

``@dataclass(frozen=True)`` makes Python 3.11 generate, compile and exec six methods per class (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``); for the ~30 value types a ``pish
run`` loads, that compiling was the largest single cost of its start-up. Here nothing is compiled: the six
are written once, in ``Value``, and work from the class's field table (``__init__`` included, which takes
the fields positionally or by name, with their defaults, then calls ``__post_init__``). What a caller sees
is the same: a dataclass (``fields``, ``replace``, ``asdict`` work), compared and hashed by its fields,
refusing assignment after ``__init__`` (``__post_init__`` may still normalize a field with
``object.__setattr__``, as with ``frozen=True``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


class Value:
    """The shared methods of every ``@value`` class. Its fields are the instance's ``__dict__``: ``__init__``
    sets each once, in field order, and nothing else is stored on the instance."""

    __slots__ = ()
    # (name, default, default_factory) of each field, in order; set by @value
    _value_fields: ClassVar[tuple[tuple[str, Any, Callable[[], Any]], ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._value_fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments but {len(args)} were given")
        values = self.__dict__
        for i, (name, default, factory) in enumerate(fields):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__}() got multiple values for argument {name!r}")
                values[name] = args[i]
            elif name in kwargs:
                values[name] = kwargs.pop(name)
            elif default is not _MISSING:
                values[name] = default
            elif factory is not _MISSING:
                values[name] = factory()
            else:
                raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:  # set once, by __init__
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__qualname__}({fields})"


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def value(cls: type[T]) -> type[T]:
    """Make ``cls`` (a subclass of ``Value``) an immutable dataclass."""
    assert issubclass(cls, Value), f"{cls.__name__} must derive from pish_core.value.Value"
    made: Any = dataclasses.dataclass(init=False, eq=False, repr=False)(cls)
    made._value_fields = tuple((f.name, f.default, f.default_factory) for f in dataclasses.fields(made))
    return cls
