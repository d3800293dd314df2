"""The REST API's settings (`[http]`)."""

from __future__ import annotations

import msgspec

from jobengine.domain.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"


class TokenSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One API bearer token, stored by its SHA-256 hex digest, with its scopes."""

    sha256: str
    scopes: list[str] = msgspec.field(default_factory=lambda: ["read"])


class HttpSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[http]`: where the API listens and what it accepts."""

    #: "HOST:PORT"; `jobengine run` serves the API only when this is set
    listen: str | None = None
    #: largest accepted request body, in bytes (413 above it)
    max_body_bytes: int = 1024 * 1024
    tokens: dict[str, TokenSettings] = msgspec.field(default_factory=dict)

    def validate(self) -> HttpSettings:
        """Raise `ConfigError` naming the first setting that makes no sense."""
        if self.listen is not None:
            parse_listen(self.listen)
        if self.max_body_bytes < 1:
            raise ConfigError(f"http.max_body_bytes must be >= 1, not {self.max_body_bytes}")
        return self


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" ("[::1]:8080" for IPv6) or raise `ConfigError`."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"http.listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)
