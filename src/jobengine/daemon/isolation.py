"""Where sealed mode runs each handler, so that none of them can reach the network.

- The daemon already has no network but loopback (systemd's
  `PrivateNetwork=yes`, or started inside `unshare --net`): every handler runs
  as usual, in the daemon (Python functions, on any event loop) or as a
  command; there is nowhere to go, and the egress guard names what was tried.
- Otherwise each handler runs in a fresh, empty network namespace: commands
  under `unshare --net`, Python functions in the sandbox (`zygote.Sandbox`: a
  fork server in such a namespace, a child process per attempt, with the
  egress guard installed). Nothing a handler starts can leave that namespace.
- Where neither is possible, sealed mode refuses to start, saying why and
  what to do. So does a Python handler the sandbox cannot import by
  reference (a lambda, a nested function, one defined in `__main__`).

The egress guard also stays installed in the daemon itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobengine.daemon.config import DaemonConfig
from jobengine.daemon.handlers import (
    FunctionHandler,
    Handler,
    ProcessHandler,
    import_function,
    resolve_handlers,
)
from jobengine.daemon.sealed import (
    database_endpoints,
    netns_wrapper,
    network_is_isolated,
    seal,
    wrap_command,
)
from jobengine.daemon.zygote import Sandbox
from jobengine.domain.errors import ConfigError, HandlerNotFound
from jobengine.domain.models import Job


@dataclass
class SandboxedHandler:
    """A Python function handler that runs in sealed mode's sandbox."""

    kind: str
    ref: str
    sandbox: Sandbox
    #: as the `FunctionHandler` it stands for
    wants_results: bool = False

    async def __call__(self, job: Job) -> Any:
        """Run the function with the job in a fresh sandboxed process."""
        return await self.sandbox.run(self.ref, job)


def sealed_handlers(
    config: DaemonConfig,
    handlers: Mapping[str, Handler] | None,
    dsn: str,
    *,
    api: tuple[str, int] | None = None,
    thread_limit: int = 40,
    also: Sequence[str] = (),
) -> dict[str, Handler]:
    """The handlers of a sealed daemon, each isolated as the module doc says.

    `handlers` are given ones (the in-process API), or None to resolve
    `config.handlers`. Installs the egress guard in this process. Starts the
    sandbox when a Python handler needs it (stop it with `aclose_handlers`).
    Raises `ConfigError` when a handler cannot be isolated here. `also`: more
    DSNs of the database (a direct `listen_dsn` beside a pooler's) to let through.
    """
    resolved = dict(handlers) if handlers is not None else resolve_handlers(
        config.handlers, thread_limit=thread_limit)
    if network_is_isolated():
        seal(dsn, api=api, also=also)
        return resolved
    refs: dict[str, str] = {}
    commands = False
    for kind, handler in resolved.items():
        if isinstance(handler, FunctionHandler):
            refs[kind] = handler_reference(kind, handler)
        elif isinstance(handler, ProcessHandler):
            commands = True
        else:
            raise ConfigError(
                f"sealed mode cannot isolate handler {kind!r}: a {type(handler).__name__} is "
                "neither a Python function nor a command; run the daemon where it has no "
                "network but loopback (systemd PrivateNetwork=yes, or inside `unshare --net`)"
            )
    subject = " and ".join(
        name for name, used in (("command", commands), ("Python", bool(refs))) if used)
    prefix = netns_wrapper(f"{subject} handlers")  # ConfigError if this system cannot
    seal(dsn, api=api, also=also)
    if prefix is None:  # (isolated after all: the namespace went away in between)
        return resolved
    sandbox = None
    if refs:
        # The sandbox may use the database's unix socket, as a handler in the
        # daemon may: that is not the network.
        sandbox = Sandbox(prefix, refs, unix=[path for d in (dsn, *also)
                                              for path in database_endpoints(d)[1]])
        sandbox.start()  # ConfigError, naming the handler, if it cannot run one
    out: dict[str, Handler] = {}
    for kind, handler in resolved.items():
        if isinstance(handler, ProcessHandler):
            out[kind] = dataclasses.replace(handler, wrap=handler.wrap or wrap_command(prefix))
        else:
            assert sandbox is not None
            out[kind] = SandboxedHandler(kind, refs[kind], sandbox,
                                         getattr(handler, "wants_results", False))
    return out


def handler_reference(kind: str, handler: FunctionHandler) -> str:
    """The "package.module:function" the sandbox imports `handler` by, or `ConfigError`."""
    if ":" in handler.ref:  # from `[handlers]`: resolve_handlers imported it by this
        return handler.ref
    func = handler.func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    ref = f"{module}:{qualname}"
    why = None
    if not isinstance(module, str) or not isinstance(qualname, str):
        why = "it has no module-level name to import it by"
    elif "<" in qualname:
        why = f"{qualname} is a lambda or a nested function"
    elif module == "__main__":
        why = "it is defined in __main__, which the sandbox does not run"
    else:
        try:
            found = import_function(ref)
        except HandlerNotFound as exc:
            why = str(exc)
        else:
            if found is not func:
                why = f"importing {ref} gives another object"
    if why is not None:
        raise ConfigError(
            f"sealed mode cannot sandbox handler {kind!r}: {why}; give a module-level "
            "function, importable as 'package.module:function'"
        )
    return ref


async def aclose_handlers(handlers: Mapping[str, Handler]) -> None:
    """Stop what the handlers share (sealed mode's sandbox); call once no attempt runs."""
    sandboxes = {id(h.sandbox): h.sandbox for h in handlers.values()
                 if isinstance(h, SandboxedHandler)}
    for sandbox in sandboxes.values():
        await sandbox.aclose()
