"""Sealed (air-gapped) mode: the daemon opens no connection but to its database.

Its parts:
- an egress guard: a Python audit hook on socket connect/sendto/sendmsg and
  on name resolution that lets through only the database's address (or its
  unix socket), the API's own address and systemd's notify socket, and raises
  `EgressBlocked` for anything else, naming the address. A handler's attempt
  fails with that message even if the handler swallowed the exception. The
  hook sees only Python-level sockets in this process: not libuv's (uvloop),
  not child processes'. So it names what was tried; the boundary is:
- handlers run where there is no network: the daemon itself when it is
  already isolated (`network_is_isolated`), else a fresh, empty network
  namespace (`netns_wrapper`: commands under it, Python handlers in the
  sandbox, see `isolation`), without the capabilities that could leave it;
  where neither is possible, sealed mode refuses to start, and says why;
- jobs with `requires_network = true` are never scheduled while sealed; they
  stay pending with a `job.held` timeline note (see the scheduler).

Audit hooks cannot be removed: the guard is for the daemon process, installed
once at start-up.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from jobengine.domain.errors import ConfigError, EgressBlocked

#: The egress attempts blocked during the current job attempt (set by the actor).
blocked_attempts: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "jobengine_blocked_egress", default=None
)

_CONNECT_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_RESOLVE_EVENTS = {
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
    "socket.gethostbyaddr", "socket.getnameinfo",
}


@dataclass
class AllowList:
    """What sealed mode lets the process reach."""

    inet: set[tuple[str, int]] = field(default_factory=set)   # (ip, port)
    names: set[str] = field(default_factory=set)               # hostnames it may resolve
    unix: set[str] = field(default_factory=set)                # socket paths (abstract: "\0...")

    def allows_inet(self, host: str, port: int) -> bool:
        """Whether (host, port) is allowed (host as a literal IP)."""
        return (_normal_ip(host), port) in self.inet

    def allows_name(self, host: str) -> bool:
        """Whether resolving `host` is allowed: our own names, and literal IPs (no lookup)."""
        if host in self.names:
            return True
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return True  # resolving a literal address asks no one; its connect is checked


def _normal_ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def database_endpoints(dsn: str) -> tuple[list[tuple[str, int]], list[str]]:
    """The (host, port) pairs and unix socket paths a libpq-style DSN points at."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    hosts: list[str] = []
    ports: list[int] = []
    netloc = parts.netloc.rsplit("@", 1)[-1]
    for item in filter(None, netloc.split(",")):
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        elif item.count(":") == 1:
            host, port = item.split(":")
        else:
            host, port = item, ""
        hosts.append(unquote(host))
        ports.append(int(port) if port.isdigit() else 0)
    for value in query.get("host", []):
        hosts.extend(unquote(v) for v in value.split(","))
    query_ports = [int(v) for value in query.get("port", []) for v in value.split(",")
                   if v.isdigit()]
    # libpq: one port for all hosts, or one per host; 5432 when none is given
    default_port = query_ports[0] if len(query_ports) == 1 else 5432
    if len(query_ports) > 1:
        ports = query_ports
    inet: list[tuple[str, int]] = []
    unix: list[str] = []
    for i, host in enumerate(hosts or ["localhost"]):
        number = ports[i] if i < len(ports) and ports[i] else default_port
        if host.startswith(("/", "@")):
            path = os.path.join(host, f".s.PGSQL.{number}")
            unix.append("\0" + path[1:] if host.startswith("@") else path)
        else:
            inet.append((host, number))
    return inet, unix


def build_allow_list(
    dsn: str, *, api: tuple[str, int] | None = None, environ: dict[str, str] | None = None,
    also: Sequence[str] = (),
) -> AllowList:
    """Resolve the database (and API) addresses now, before the guard is up.

    `also`: more DSNs of the same database (the direct `listen_dsn` beside a pooler's).
    """
    env = dict(os.environ) if environ is None else environ
    inet, unix = database_endpoints(dsn)
    for other in also:
        more_inet, more_unix = database_endpoints(other)
        inet += more_inet
        unix += more_unix
    allow = AllowList(unix=set(unix))
    targets = list(inet) + ([api] if api is not None else [])
    for host, port in targets:
        allow.names.add(host)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(f"sealed mode: cannot resolve the database host {host!r}: {exc}") \
                from exc
        for info in infos:
            allow.inet.add((_normal_ip(str(info[4][0])), port))
    notify = env.get("NOTIFY_SOCKET", "")
    if notify:
        allow.unix.add("\0" + notify[1:] if notify.startswith("@") else notify)
    return allow


class EgressGuard:
    """The audit hook that enforces an `AllowList`."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self.blocked: list[str] = []

    def install(self) -> None:
        """Install the hook for the rest of the process's life."""
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event in _CONNECT_EVENTS:
            sock, address = args[0], args[1]
            if address is None:
                return  # sendmsg on a connected socket: its connect was checked
            self._check_address(getattr(sock, "family", None), address)
        elif event in _RESOLVE_EVENTS:
            host = args[0]
            if isinstance(host, tuple):  # getnameinfo((host, port), flags)
                host = host[0]
            if isinstance(host, bytes):
                host = host.decode(errors="replace")
            if host is None or not isinstance(host, str):
                return
            if not self.allow.allows_name(host):
                self._block(repr(host), "a name lookup of")

    def _check_address(self, family: Any, address: Any) -> None:
        if family == socket.AF_UNIX or isinstance(address, (str, bytes)):
            path = address.decode(errors="replace") if isinstance(address, bytes) else address
            if path not in self.allow.unix:
                self._block(f"unix socket {path.lstrip(chr(0))!r}")
            return
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = str(address[0]), int(address[1])
            if not self.allow.allows_inet(host, port):
                self._block(f"{host}:{port}")
            return
        self._block(repr(address))

    def _block(self, what: str, action: str = "a connection to") -> None:
        error = EgressBlocked(what, action)
        self.blocked.append(str(error))
        attempts = blocked_attempts.get()
        if attempts is not None:
            attempts.append(str(error))
        raise error


_installed: EgressGuard | None = None


def seal(
    dsn: str, *, api: tuple[str, int] | None = None, also: Sequence[str] = ()
) -> EgressGuard:
    """Install the egress guard for this process (once; later calls return it)."""
    global _installed
    if _installed is None:
        guard = EgressGuard(build_allow_list(dsn, api=api, also=also))
        guard.install()
        _installed = guard
    return _installed


def network_is_isolated() -> bool:
    """Whether this process has no network but loopback (e.g. systemd's PrivateNetwork=yes)."""
    try:
        # /proc/self/net/dev lists the interfaces of *this* process's namespace
        # (/sys/class/net shows whichever namespace sysfs was mounted in).
        with open("/proc/self/net/dev") as fh:
            lines = fh.read().splitlines()[2:]
    except OSError:
        return False
    interfaces = {line.split(":", 1)[0].strip() for line in lines if ":" in line}
    return interfaces <= {"lo"}


#: Capabilities (name: number) with which a root process could leave its network
#: namespace: setns() into another, move interfaces, ptrace a process outside it,
#: load a module. Isolated handlers never have them.
ESCAPE_CAPABILITIES = {"sys_admin": 21, "net_admin": 12, "sys_ptrace": 19, "sys_module": 16}


def netns_wrapper(subject: str = "command handlers") -> list[str] | None:
    """The argv prefix that runs a program in a fresh, empty network namespace.

    None when the process already has no network (its children inherit that).
    Raises `ConfigError` naming `subject` (what needed isolating) when neither
    is possible here.
    """
    if network_is_isolated():
        return None
    advice = ("run the daemon where it has no network but loopback (systemd "
              "PrivateNetwork=yes, or inside `unshare --net`)")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise ConfigError(
            f"sealed mode cannot isolate {subject}: `unshare` (util-linux) is not "
            f"installed; install it, or {advice}"
        )
    candidates = [[unshare, "--net", "--"], [unshare, "--net", "--map-root-user", "--"]]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        # Root keeps every capability in a plain `unshare --net`, CAP_SYS_ADMIN
        # included, with which it could setns() back into the host's network.
        drop = ",".join(f"-{name}" for name in ESCAPE_CAPABILITIES)
        candidates.insert(0, [*candidates[0][:-1], "--", setpriv, f"--bounding-set={drop}", "--"])
    errors = []
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(str(exc))
            continue
        if probe.returncode == 0:
            return prefix
        errors.append(probe.stderr.strip() or f"exit status {probe.returncode}")
    raise ConfigError(
        f"sealed mode cannot isolate {subject}: this system does not allow creating "
        f"a network namespace ({'; '.join(errors)}); run as root, allow unprivileged user "
        f"namespaces, or {advice}"
    )


def wrap_command(prefix: Iterable[str] | None) -> Callable[[list[str]], list[str]] | None:
    """A `wrap` function for command handlers that prepends `prefix` (None: no wrapping)."""
    if prefix is None:
        return None
    head = list(prefix)

    def wrap(argv: list[str]) -> list[str]:
        return [*head, *argv]

    return wrap
