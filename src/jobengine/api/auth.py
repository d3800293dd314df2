"""The one place authentication plugs in: a scope per route, one middleware that checks it.

Endpoints only declare what they need (`@requires_scope("read")`); they never
see a token. `AuthMiddleware` finds the route a request is for, reads the
scope it requires and asks the configured `Authorizer` whether the request
may have it. Today's authorizer, `allow_all`, lets everything through;
bearer tokens with scopes replace it without touching any endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from jobengine.api.errors import ApiError, error_response

#: What a route may require. `None` (no annotation) means public: health, metrics, schema.
AccessScope = Literal["read", "write"]

_ATTRIBUTE = "__jobengine_scope__"
#: The key under which the middleware leaves the required scope in the ASGI scope.
SCOPE_KEY = "jobengine.required_scope"

F = TypeVar("F", bound=Callable[..., object])


def requires_scope(scope: AccessScope) -> Callable[[F], F]:
    """Mark an endpoint as needing `scope` ("read" or "write")."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, scope)
        return endpoint

    return mark


def scope_of(endpoint: object) -> AccessScope | None:
    """The scope an endpoint was marked with, or None if it is public."""
    value: AccessScope | None = getattr(endpoint, _ATTRIBUTE, None)
    return value


class Authorizer(Protocol):
    """Decides whether a request may use a route needing `required` (None: public).

    Raise `ApiError(401, ...)` for a missing or unknown credential and
    `ApiError(403, ...)` for one without the scope; return to allow.
    """

    def __call__(
        self, connection: HTTPConnection, required: AccessScope | None
    ) -> Awaitable[None]:
        """Allow the request, or raise `ApiError`."""
        ...


async def allow_all(connection: HTTPConnection, required: AccessScope | None) -> None:
    """The placeholder authorizer: every request is allowed."""
    return None


def required_scope(routes: Sequence[BaseRoute], scope: Scope) -> AccessScope | None:
    """The access scope of the route that `scope` (an ASGI request) will reach."""
    for route in routes:
        match, _child = route.matches(scope)
        if match is Match.FULL and isinstance(route, Route):
            return scope_of(route.endpoint)
    return None


#: Answers a refused request in its own way (e.g. the dashboard's pages send a
#: browser to the login form), or returns None for the JSON error body.
DeniedHandler = Callable[[HTTPConnection, ApiError], Response | None]


class AuthMiddleware:
    """Pure ASGI middleware: checks each request against its route's scope."""

    def __init__(
        self, app: ASGIApp, *, routes: Sequence[BaseRoute], authorizer: Authorizer = allow_all,
        on_denied: DeniedHandler | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.authorizer = authorizer
        self.on_denied = on_denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authorize, then pass the request on (or answer 401/403)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(self.routes, scope)
        scope[SCOPE_KEY] = needed
        connection = HTTPConnection(scope)
        try:
            await self.authorizer(connection, needed)
        except ApiError as exc:
            response = self.on_denied(connection, exc) if self.on_denied is not None else None
            if response is None:
                response = error_response(exc.status, exc.code, exc.message, exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
