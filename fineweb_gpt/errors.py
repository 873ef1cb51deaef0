"""The one root of the errors that are the user's to fix.

A UserError's message names the file, key or folder at fault and says what to do; the scripts' main()
print it as one line and exit. Only a failure the user can act on belongs under it (a wrong key, a
missing or corrupt file, an unwritable folder, a device this machine lacks); raise it where that
failure is detected, converting the library's exception there (`raise ... from e`). Every other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


class UserError(Exception):
    """A mistake or a limit of the user's setup; the message says what to do."""


@contextmanager
def raised_as(make: Callable[[Exception], UserError], *kinds: type[Exception]) -> Iterator[None]:
    """Inside the block an exception of one of `kinds` becomes the UserError make(e), chained to it: for a
    block whose every such failure is the user's to fix, e.g. OSError while writing into a folder they named."""
    try:
        yield
    except kinds as e:
        raise make(e) from e
