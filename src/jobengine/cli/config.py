"""Configuration: a TOML file, then `JOBENGINE_*` environment variables, then flags.

The contract's settings (see the README):

    dsn = "postgresql://user@host/db"      # several hosts: h1:5432,h2:5432 + target_session_attrs
    listen_dsn = "postgresql://..."        # direct connection for LISTEN when dsn is pooled
    pooler = "pgbouncer"                   # dsn goes through PgBouncer in transaction mode
    sealed = false
    app = "myapp.tasks:app"                # a jobengine.App whose tasks `jobengine run` runs
    [daemon]   queues, concurrency, lease_ttl, poll_interval, shutdown_grace
    [retry]    strategy, base_delay, max_delay, jitter
    [retention] finished_jobs, audit ("30d", "90d", "forever"), interval, partitions_ahead, batch,
                seal_grace
    [http]     listen, max_body_bytes, tokens
    [handlers] kind = "pkg.module:function" | { command = [...] }
    [schedules.NAME] cron | every, kind, queue, payload, priority, limit_key, timezone, enabled
    [embedded] data_dir

Environment: `JOBENGINE_DSN`, `JOBENGINE_LISTEN_DSN`, `JOBENGINE_POOLER`, `JOBENGINE_SEALED`,
`JOBENGINE_APP`, and
`JOBENGINE_<SECTION>_<KEY>` (`JOBENGINE_DAEMON_LEASE_TTL=5`,
`JOBENGINE_HANDLERS_EMAIL=myapp.jobs:send_email`). The file is `--config`, or
`JOBENGINE_CONFIG`.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from jobengine.api.config import HttpSettings
from jobengine.daemon.config import DaemonConfig, DaemonSettings, HandlerSpec, RetentionSettings
from jobengine.domain.errors import ConfigError, InvalidSchedule
from jobengine.domain.retry import RetryPolicy
from jobengine.domain.schedules import ScheduleSpec, from_config
from jobengine.store.pool import POOLERS, Database

ENV_PREFIX = "JOBENGINE_"
#: JOBENGINE_* variables that are not settings
_NOT_SETTINGS = {"CONFIG"}
#: top-level settings (JOBENGINE_<NAME>), the rest are JOBENGINE_<SECTION>_<KEY>
_TOP_LEVEL = ("dsn", "sealed", "listen_dsn", "pooler", "app")


class EmbeddedSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[embedded]`: the PostgreSQL jobengine starts when no DSN is configured."""

    #: default: $XDG_DATA_HOME/jobengine/pgdata (~/.local/share/jobengine/pgdata)
    data_dir: str | None = None


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All of jobengine's settings."""

    dsn: str | None = None
    #: a direct connection for LISTEN (and session locks) when `dsn` goes through a pooler
    listen_dsn: str | None = None
    #: "pgbouncer": `dsn` goes through PgBouncer in transaction mode
    pooler: str | None = None
    sealed: bool = False
    #: "module:attr" of a `jobengine.App` whose tasks `jobengine run` runs (as `--app`)
    app: str | None = None
    daemon: DaemonSettings = msgspec.field(default_factory=DaemonSettings)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    handlers: dict[str, HandlerSpec] = msgspec.field(default_factory=dict)
    embedded: EmbeddedSettings = msgspec.field(default_factory=EmbeddedSettings)
    #: `[schedules.NAME]` tables, upserted into jobengine.schedules when a daemon starts
    schedules: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def schedule_specs(self) -> list[ScheduleSpec]:
        """`[schedules.*]` as checked specs (`ConfigError` naming the schedule and field)."""
        specs = []
        for name, table in sorted(self.schedules.items()):
            if not isinstance(table, dict):
                raise ConfigError(f"schedules.{name} must be a table, not {table!r}")
            try:
                specs.append(from_config(name, table))
            except InvalidSchedule as exc:
                raise ConfigError(f"invalid configuration: {exc}") from None
        return specs

    def validate_database(self) -> None:
        """Raise `ConfigError` when `pooler` / `listen_dsn` make no sense."""
        if self.pooler is not None and self.pooler not in POOLERS:
            raise ConfigError(
                f"pooler must be one of {', '.join(POOLERS)} (or unset), not {self.pooler!r}")
        if self.pooler is not None and not self.dsn:
            raise ConfigError("pooler is set but dsn is not: the embedded PostgreSQL has no pooler")

    def database(self, dsn: str) -> Database:
        """Where connections go, for `dsn` (the configured one, or the embedded server's)."""
        if dsn != self.dsn:  # the embedded server: direct, no pooler
            return Database(dsn)
        return Database(dsn, listen_dsn=self.listen_dsn or None, pooler=self.pooler or None)

    def daemon_config(self) -> DaemonConfig:
        """The part of the settings a daemon runs on."""
        return DaemonConfig(
            daemon=self.daemon, retry=self.retry, retention=self.retention,
            handlers=dict(self.handlers), sealed=self.sealed, schedules=self.schedule_specs(),
        )


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "daemon": DaemonSettings,
    "retry": RetryPolicy,
    "retention": RetentionSettings,
    "http": HttpSettings,
    "embedded": EmbeddedSettings,
}


def _env_value(raw: str, hint: Any) -> Any:
    """Turn an environment string into what the setting expects."""
    text = raw.strip()
    if hint is list or (getattr(hint, "__origin__", None) is list):
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if text.startswith(("{", "[")):
        return json.loads(text)
    return text


def _field_types(struct: type[msgspec.Struct]) -> dict[str, Any]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    out: dict[str, Any] = {}
    for f in info.fields:
        t = f.type
        if isinstance(t, msgspec.inspect.UnionType):
            t = next((x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)), t)
        out[f.name] = list if isinstance(t, msgspec.inspect.ListType) else None
    return out


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings named by `JOBENGINE_*` variables, as a nested dict."""
    data: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):]
        if key in _NOT_SETTINGS:
            continue
        lowered = key.lower()
        try:
            if lowered in _TOP_LEVEL:
                data[lowered] = raw
                continue
            section, _, field = lowered.partition("_")
            if section == "handlers" and field:
                text = raw.strip()
                data.setdefault("handlers", {})[field] = (
                    json.loads(text) if text.startswith("{") else text
                )
                continue
            struct = _SECTIONS.get(section)
            if struct is None or not field:
                continue  # not ours (e.g. JOBENGINE_TEST_DSN)
            fields = _field_types(struct)
            if field not in fields:
                raise ConfigError(
                    f"{name}: [{section}] has no setting {field!r} "
                    f"(known: {', '.join(sorted(fields))})"
                )
            data.setdefault(section, {})[field] = _env_value(raw, fields[field])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not valid JSON: {exc}") from exc
        except RecursionError:
            raise ConfigError(f"{name}: JSON nested too deeply") from None
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            # sections merge key by key; a handler replaces the handler of its kind
            merged[key] = (
                {**merged[key], **value} if key == "handlers" else _merge(dict(merged[key]), value)
            )
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's contents, or `ConfigError` saying what is wrong with it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_settings(
    config: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read settings from the file, the environment and explicit overrides, in that order."""
    environ = os.environ if env is None else env
    path = config or environ.get("JOBENGINE_CONFIG")
    data: dict[str, Any] = read_toml(Path(path)) if path else {}
    data = _merge(data, env_overrides(environ))
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    where = f" in {path}" if path else ""
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration{where}: {exc}") from exc
    except ConfigError:
        raise
    except Exception as exc:  # e.g. InvalidJob from RetryPolicy.__post_init__
        raise ConfigError(f"invalid configuration{where}: {exc}") from exc
    settings.validate_database()
    settings.daemon.validate()
    settings.retention.validate()
    settings.http.validate()
    settings.schedule_specs()
    return settings
