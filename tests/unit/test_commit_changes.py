"""``pish commit --change``: parsed at the edge, one line for what is wrong."""
from __future__ import annotations

import pytest

from pish_core.errors import ImageError
from pish_core.image.commit import apply_changes


def test_changes_apply() -> None:
    out = apply_changes({"Env": ["A=1"]}, ["ENV A=2 B='x y'", "CMD [\"sh\"]", "EXPOSE 80"])
    assert out["Env"] == ["A=2", "B=x y"]
    assert out["Cmd"] == ["sh"]
    assert out["ExposedPorts"] == {"80/tcp": {}}


@pytest.mark.parametrize("change", ["ENV A='unclosed", 'LABEL a="b'])
def test_an_unclosed_quote_is_one_line(change: str) -> None:
    """shlex's ValueError came out as a traceback."""
    with pytest.raises(ImageError, match="--change"):
        apply_changes({}, [change])
