"""``@value`` types (pish_core/value.py) behave as ``@dataclass(frozen=True)`` did: immutable, compared and
hashed by their fields, still dataclasses for ``replace``/``asdict``/``fields``."""
from __future__ import annotations

import dataclasses

import pytest

from pish_core.spec import Mount, Process, Resources, User
from pish_core.value import Value, value


@value
class Pair(Value):
    a: int
    b: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "b", tuple(self.b))  # normalizing in __post_init__ still works


def test_immutable_after_init() -> None:
    p = Pair(1, [2, 3])  # type: ignore[arg-type]
    assert p.b == (2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.a = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.a


def test_equality_hash_and_repr_by_fields() -> None:
    assert Pair(1, (2,)) == Pair(1, (2,)) and Pair(1) != Pair(2)
    assert hash(Pair(1, (2,))) == hash(Pair(1, (2,)))
    assert len({Mount("/a"), Mount("/a"), Mount("/b")}) == 2
    assert Pair(1) != (1, ())  # not a tuple, and not equal to another type with the same fields
    assert repr(Pair(1)) == "Pair(a=1, b=())"
    assert Resources().empty() and not Resources(memory=1 << 20).empty()


def test_still_a_dataclass() -> None:
    proc = Process(args=("sh",), user=User(1, 2))
    assert dataclasses.replace(proc, cwd="/tmp").cwd == "/tmp"
    assert dataclasses.asdict(proc)["user"] == {"uid": 1, "gid": 2, "additional_gids": ()}
    assert [f.name for f in dataclasses.fields(Pair)] == ["a", "b"]


def test_init_takes_fields_by_position_or_name_with_defaults_and_refuses_the_rest() -> None:
    """``__init__`` is ``Value``'s, read from the field table (no generated code to compile at import)."""
    assert Pair(1) == Pair(a=1) == Pair(1, ()) and Pair(b=(4,), a=3).b == (4,)
    assert User(1, 2).additional_gids == () and Process(args=("sh",)).env == ()
    for bad, message in ((lambda: Pair(), "missing required argument: 'a'"),
                         (lambda: Pair(1, (), 3), "takes 2 arguments but 3 were given"),
                         (lambda: Pair(1, a=2), "multiple values for argument 'a'"),
                         (lambda: Pair(1, c=2), "unexpected keyword argument 'c'")):
        with pytest.raises(TypeError, match=message):
            bad()
    assert "__init__" not in vars(Pair)  # nothing generated


def test_a_default_factory_gives_each_instance_its_own() -> None:
    from pish_core.spec import DriverChoice

    one, two = DriverChoice("a"), DriverChoice("a")
    assert one.options == {} and one.options is not two.options
