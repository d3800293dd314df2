"""The daemon's settings: defaults, validation, and handler references."""

from __future__ import annotations

import msgspec

from jobengine.domain.errors import ConfigError
from jobengine.domain.retry import RetryPolicy


class CommandHandler(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A handler that runs a program: the job as JSON on stdin, exit 0 = completed.

    stdout, if it is JSON, becomes the job's result. On timeout or cancel the
    whole process group is killed.
    """

    command: list[str]
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None


#: A handler reference: "package.module:function" or a command.
HandlerSpec = str | CommandHandler


class DaemonSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[daemon]`: how one daemon claims and runs jobs (seconds unless said)."""

    queues: list[str] = msgspec.field(default_factory=lambda: ["default"])
    concurrency: int = 10
    lease_ttl: float = 30.0
    poll_interval: float = 1.0
    shutdown_grace: float = 10.0
    #: how often leases are renewed (default: a third of lease_ttl)
    lease_renew_interval: float | None = None
    #: how long before its lease could expire a daemon stops a handler whose
    #: lease it could not renew (default: a sixth of lease_ttl)
    lease_margin: float | None = None
    #: how often the reaper looks for expired leases (default: lease_ttl / 4, at most 1 s,
    #: so a crashed daemon's jobs run again within lease_ttl + about a second)
    reap_interval: float | None = None
    #: the daemon's id in leases and history (default: host-pid-random)
    id: str | None = None

    def validate(self) -> DaemonSettings:
        """Raise `ConfigError` naming the first setting that makes no sense."""
        if not self.queues:
            raise ConfigError("daemon.queues must name at least one queue")
        if self.concurrency < 1:
            raise ConfigError(f"daemon.concurrency must be >= 1, not {self.concurrency}")
        for name in ("lease_ttl", "poll_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"daemon.{name} must be > 0, not {getattr(self, name)}")
        if not self.shutdown_grace >= 0:
            raise ConfigError(f"daemon.shutdown_grace must be >= 0, not {self.shutdown_grace}")
        renew = self.renew_interval
        if renew >= self.lease_ttl:
            raise ConfigError(
                f"daemon.lease_renew_interval ({renew}) must be shorter than lease_ttl "
                f"({self.lease_ttl}), or leases expire between renewals"
            )
        margin = self.fence_margin
        if not margin > 0 or renew + margin >= self.lease_ttl:
            raise ConfigError(
                f"daemon.lease_margin ({margin}) must be > 0 and leave room for a renewal: "
                f"lease_renew_interval + lease_margin ({renew + margin}) must be shorter than "
                f"lease_ttl ({self.lease_ttl})"
            )
        return self

    @property
    def renew_interval(self) -> float:
        """Seconds between lease renewals."""
        return self.lease_renew_interval or self.lease_ttl / 3

    @property
    def fence_margin(self) -> float:
        """Seconds before a lease's possible expiry by which its handler is stopped."""
        return self.lease_margin if self.lease_margin is not None else self.lease_ttl / 6

    @property
    def reaper_interval(self) -> float:
        """Seconds between reaper passes."""
        return self.reap_interval or min(self.lease_ttl / 4, 1.0)


class DaemonConfig(msgspec.Struct, kw_only=True):
    """Everything a running daemon needs, assembled by the CLI from settings."""

    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    handlers: dict[str, HandlerSpec] = msgspec.field(default_factory=dict)
    sealed: bool = False
