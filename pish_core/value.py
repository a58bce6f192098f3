"""``@value``: pish's immutable value types (the spec and its parts), as dataclasses that are cheap to define.

``@dataclass(frozen=True)`` makes Python 3.11 generate and compile six methods per class (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``); for the 30 value types a ``pish
run`` loads that was the largest single cost of its start-up (~1-2 ms a class). Here only ``__init__`` is
generated; the other five are written once, in ``Value``, and work from the instance's fields. What a
caller sees is the same: a dataclass (``fields``, ``replace``, ``asdict`` work), compared and hashed by its
fields, refusing assignment after ``__init__`` (``__post_init__`` may still normalize a field with
``object.__setattr__``, as with ``frozen=True``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


class Value:
    """The shared methods of every ``@value`` class. Its fields are the instance's ``__dict__``: ``__init__``
    sets each once, in field order, and nothing else is stored on the instance."""

    __slots__ = ()

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
    return dataclasses.dataclass(eq=False, repr=False)(cls)
