"""The one error of the embedded server, :class:`EmbeddedPostgresError`.

It lives in a module of its own because every other module of
:mod:`jobengine.embedded` raises it and none of them should import another
just for the exception.
"""

from __future__ import annotations

__all__ = ["EmbeddedPostgresError"]


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised, started or stopped.

    The message says what failed and, when there is one, where the server log is.
    """
