"""Bearer tokens with scopes: the authorizer for `[http.tokens]`.

Tokens are configured by their SHA-256 hex digest, never in clear:

    [http.tokens.ops]
    sha256 = "<64 hex digits>"
    scopes = ["write"]        # "read", or "write" (which implies read)

A request presents `Authorization: Bearer <token>`; its digest is compared
with every configured digest in constant time (all of them, whatever
matches). Missing or unknown token: 401; a token without the route's scope:
403. Tokens are never logged. With no token configured the API serves only
on a loopback address, and refuses any other.

A browser signed in to the dashboard presents the same token in its session
cookie (`SESSION_COOKIE`, HttpOnly, SameSite=Strict, set by `POST
/ui/login`). The cookie counts for reading anything (GET and HEAD, so the
dashboard's pages and its `GET /v1/events` stream) and for the dashboard's
own actions under `/ui/`, which check a CSRF token besides; never for the
REST API's writes, which take the header only.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping
from hashlib import sha256

from starlette.requests import HTTPConnection

from jobengine.api.auth import AccessScope, Authorizer, allow_all
from jobengine.api.config import TokenSettings
from jobengine.api.errors import ApiError
from jobengine.domain.errors import ConfigError

#: What each configured scope grants.
GRANTS: Mapping[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobengine"'}
#: TOKEN_KEY in the ASGI scope names the token a request used (never the token).
TOKEN_KEY = "jobengine.token_name"
#: GRANTED_KEY in the ASGI scope: the scopes that token grants (absent: no tokens configured).
GRANTED_KEY = "jobengine.granted"
#: The dashboard's session cookie: it holds the token a browser signed in with.
SESSION_COOKIE = "jobengine_session"
#: The paths where the session cookie also counts for writes (the dashboard's own).
UI_PREFIX = "/ui/"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a token is configured by."""
    return sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return "je_" + secrets.token_urlsafe(32)


def check_token_name(name: str) -> str:
    """A token's name as it may appear in the config (`[http.tokens.NAME]`)."""
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")
    return name


class TokenAuthorizer:
    """Checks bearer tokens against the configured digests and scopes."""

    def __init__(self, tokens: Mapping[str, TokenSettings]) -> None:
        self._tokens: list[tuple[str, bytes, frozenset[str]]] = []
        for name, token in tokens.items():
            check_token_name(name)
            digest = token.sha256.lower()
            if not _HEX64.match(digest):
                raise ConfigError(
                    f"http.tokens.{name}.sha256 must be 64 hex digits (a SHA-256 digest)")
            unknown = set(token.scopes) - set(GRANTS)
            if unknown or not token.scopes:
                raise ConfigError(
                    f"http.tokens.{name}.scopes must be a non-empty list of 'read' and "
                    f"'write', not {token.scopes!r}")
            granted = frozenset().union(*(GRANTS[s] for s in token.scopes))
            self._tokens.append((name, digest.encode(), granted))

    async def __call__(self, connection: HTTPConnection, required: AccessScope | None) -> None:
        """Allow a public route, or a request whose token grants `required`."""
        if required is None:
            return
        token = presented_token(connection)
        if token is None:
            raise ApiError(401, "this endpoint needs a bearer token: Authorization: Bearer <token>",
                           headers=_CHALLENGE)
        found = self.identify(token)
        if found is None:
            raise ApiError(401, "the bearer token is not valid", headers=_CHALLENGE)
        name, granted = found
        connection.scope[TOKEN_KEY] = name
        connection.scope[GRANTED_KEY] = granted
        if required not in granted:
            raise ApiError(403, f"token {name!r} does not have the {required!r} scope")

    def identify(self, token: str) -> tuple[str, frozenset[str]] | None:
        """The name of the token and the scopes it grants, or None if it is not configured."""
        digest = hash_token(token).encode()
        found: tuple[str, frozenset[str]] | None = None
        for name, known, granted in self._tokens:
            # compare with every token, so timing tells nothing about which matched
            if hmac.compare_digest(digest, known):
                found = (name, granted)
        return found


def presented_token(connection: HTTPConnection) -> str | None:
    """The token a request presents: its bearer header, else the session cookie where it counts.

    The cookie counts for GET and HEAD anywhere and for every method under
    `/ui/` (whose actions check a CSRF token); a REST write needs the header.
    """
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    cookie = connection.cookies.get(SESSION_COOKIE, "").strip()
    if not cookie:
        return None
    method = connection.scope.get("method", "GET")
    if method in _SAFE_METHODS or connection.url.path.startswith(UI_PREFIX):
        return cookie
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or 'localhost') is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def authorizer_for(tokens: Mapping[str, TokenSettings], host: str) -> Authorizer:
    """The authorizer for these settings; refuses a non-loopback address without tokens."""
    if tokens:
        return TokenAuthorizer(tokens)
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the API on {host} without authentication: add a token "
            "([http.tokens.NAME], see `jobengine token new`) or listen on 127.0.0.1"
        )
    return allow_all
