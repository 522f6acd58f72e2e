from __future__ import annotations

import jetstandby
from jetstandby import errors


def test_all_is_sorted_and_importable() -> None:
    names = [n for n in jetstandby.__all__ if n != "__version__"]
    assert names == sorted(names, key=str.lower) or names == sorted(names)
    for name in jetstandby.__all__:
        assert hasattr(jetstandby, name), name


def test_every_error_has_one_root() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(classes) > 10
    assert all(issubclass(cls, jetstandby.JetstandbyError) for cls in classes)
    assert jetstandby.JournalUnavailable.retriable
    assert not jetstandby.FencedError.retriable
