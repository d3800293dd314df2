"""The daemon's settings: defaults, validation, and handler references."""

from __future__ import annotations

import msgspec

from jobengine.domain.errors import ConfigError
from jobengine.domain.retention import BATCH, RetentionPolicy
from jobengine.domain.retry import RetryPolicy
from jobengine.domain.schedules import ScheduleSpec


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
    #: with notify_mode = 'relayed': seconds between the relay's looks for new ledger rows
    relay_interval: float = 0.005

    def validate(self) -> DaemonSettings:
        """Raise `ConfigError` naming the first setting that makes no sense."""
        if not self.queues:
            raise ConfigError("daemon.queues must name at least one queue")
        if self.concurrency < 1:
            raise ConfigError(f"daemon.concurrency must be >= 1, not {self.concurrency}")
        for name in ("lease_ttl", "poll_interval", "relay_interval"):
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


class RetentionSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[retention]`: how long finished jobs and the ledger are kept, and how it is applied."""

    #: completed, cancelled and failed-with-no-retry-left jobs, this long after finished_at
    finished_jobs: str | float = "30d"
    #: history and timeline rows older than this, whole days at a time ("forever" keeps them)
    audit: str | float = "90d"
    #: seconds between the daemon's passes (one daemon at a time runs one)
    interval: float = 3600.0
    #: daily ledger partitions made ahead of time
    partitions_ahead: int = 7
    #: finished jobs removed per transaction
    batch: int = BATCH
    #: seconds after a UTC day ends before a pass seals it (statements running across
    #: midnight have committed by then)
    seal_grace: float = 3600.0

    def policy(self) -> RetentionPolicy:
        """The policy these settings describe (raises `ConfigError` when they make no sense)."""
        return RetentionPolicy.parse(self.finished_jobs, self.audit)

    def validate(self) -> RetentionSettings:
        """Raise `ConfigError` naming the first setting that makes no sense."""
        self.policy()
        if not self.interval > 0:
            raise ConfigError(f"retention.interval must be > 0, not {self.interval}")
        if not 1 <= self.partitions_ahead <= 366:
            raise ConfigError(
                f"retention.partitions_ahead must be 1..366, not {self.partitions_ahead}")
        if not 1 <= self.batch <= 100_000:
            raise ConfigError(f"retention.batch must be 1..100000, not {self.batch}")
        if not 0 <= self.seal_grace <= 86_400:
            raise ConfigError(
                f"retention.seal_grace must be 0..86400 seconds, not {self.seal_grace}")
        return self


class DaemonConfig(msgspec.Struct, kw_only=True):
    """Everything a running daemon needs, assembled by the CLI from settings."""

    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    handlers: dict[str, HandlerSpec] = msgspec.field(default_factory=dict)
    sealed: bool = False
    #: schedules upserted into jobengine.schedules when the daemon starts
    schedules: list[ScheduleSpec] = msgspec.field(default_factory=list)
