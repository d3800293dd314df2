"""The dashboard's browser session: the signed-in token's cookie, CSRF, form bodies.

- Signing in (`POST /ui/login`) checks the token with the app's own
  authorizer and keeps it in `SESSION_COOKIE`: a session cookie (gone when
  the browser closes), HttpOnly (no script reads it), SameSite=Strict (no
  other site's page sends it), Secure over HTTPS. The token never appears
  in a URL. The authorizer then reads it as it reads a bearer header
  (`jobengine.api.tokens.presented_token`).
- Every action is a POST carrying a CSRF token that must equal the
  `CSRF_COOKIE` this server set (double submit: another site can neither
  read nor set it), from a page of this origin (`Origin` and
  `Sec-Fetch-Site` checked when the browser sends them). With no token
  configured (loopback only) the same check keeps other sites' pages from
  acting through the operator's browser.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from jobengine.api.auth import allow_all
from jobengine.api.errors import ApiError
from jobengine.api.inputs import read_body
from jobengine.api.tokens import GRANTED_KEY, SESSION_COOKIE, TOKEN_KEY

CSRF_COOKIE = "jobengine_csrf"
#: The form field (and header, for scripts) that carries the CSRF token.
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_FORM_MEDIA = "application/x-www-form-urlencoded"
#: Largest form accepted (a bulk action's ids included).
MAX_FORM_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a page needs to know about who is looking."""

    #: whether the server asks for a token at all
    auth_required: bool
    #: the token's name (None: no token, or none needed)
    token_name: str | None
    #: whether this session may act (cancel, retry, pause, ...)
    can_write: bool


def auth_required(request: Request) -> bool:
    """Whether this server checks tokens (it does unless it serves loopback without any)."""
    return request.app.state.authorizer is not allow_all


def session_info(request: Request) -> SessionInfo:
    """Who is looking, from what the authorizer left in the request's scope."""
    granted = request.scope.get(GRANTED_KEY)
    # No scopes recorded: the authorizer allows everything (no tokens configured).
    can_write = (granted is None and not auth_required(request)) or (
        granted is not None and "write" in granted)
    return SessionInfo(auth_required(request), request.scope.get(TOKEN_KEY), can_write)


def csrf_for(request: Request) -> str:
    """The CSRF token of this browser: its cookie's, or a new one (set by `ensure_csrf_cookie`)."""
    known = request.cookies.get(CSRF_COOKIE, "")
    if 20 <= len(known) <= 100 and known.isascii():
        return known
    token: str = request.scope.setdefault("jobengine.csrf", secrets.token_urlsafe(32))
    return token


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def ensure_csrf_cookie(request: Request, response: Response, token: str) -> None:
    """Set the CSRF cookie on `response` when the browser does not have it yet."""
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=_secure(request), path="/ui")


def set_session(request: Request, response: Response, token: str) -> None:
    """Keep `token` in the browser's session cookie."""
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                        secure=_secure(request), path="/")


def clear_session(request: Request, response: Response) -> None:
    """Forget the signed-in token."""
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_secure(request))


def _same_origin(request: Request) -> bool:
    """Whether the browser says the request comes from a page of this origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", request.url.netloc)


async def read_form(request: Request) -> dict[str, list[str]]:
    """The POSTed form, after the CSRF check (403 when it fails), as {field: [values]}."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != _FORM_MEDIA:
        raise ApiError(415, f"the dashboard's forms are {_FORM_MEDIA}")
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        form = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10_000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the form cannot be read: {exc}", "bad_request") from None
    sent = (form.get(CSRF_FIELD) or [request.headers.get(CSRF_HEADER, "")])[0]
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(403, "the form's CSRF token does not match: reload the page and try again",
                       "csrf_failed")
    if not _same_origin(request):
        raise ApiError(403, "the form was sent from another site", "csrf_failed")
    return form
