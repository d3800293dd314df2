"""Rendering the dashboard: Jinja2 templates, always escaped, behind a strict CSP.

Every page is rendered by `page()`: autoescaping is on for every template,
so a payload, an error or a kind is text wherever it appears (a payload
holding `<script>` shows as those characters). Data for the page's script
goes in `data-*` attributes (escaped the same way), never in an inline
script: the Content-Security-Policy allows scripts from `/ui/static/` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import jinja2
import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from jobengine.api.ui.session import csrf_for, ensure_csrf_cookie, session_info
from jobengine.domain.status import JobStatus

#: Scripts, styles, images and connections from this origin only; no inline
#: script or style, no plugin, no framing, forms posting only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

#: Headers on every dashboard response.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

STATUSES = [s.value for s in JobStatus]


def _count(value: Any) -> str:
    """A count as the dashboard shows it: `1,234`, or `≈ 9.9M` for an estimate."""
    n, exact = (value.n, value.exact) if hasattr(value, "exact") else (int(value), True)
    if exact:
        return f"{n:,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"≈ {n / size:.3g}{unit}"
    return f"≈ {n:,}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _seconds(value: float | timedelta | None) -> str:
    """A duration, short: `850 ms`, `12.3 s`, `4 min 5 s`, `3 h 2 min`, `2 d 4 h`."""
    if value is None:
        return "—"
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def _pretty(value: Any) -> str:
    """JSON, indented (the template escapes it)."""
    return json.dumps(msgspec.to_builtins(value), indent=2, sort_keys=True, ensure_ascii=False)


def _compact(value: Any) -> str:
    """JSON on one line (for a table cell or a `data-*` attribute; the template escapes it)."""
    return json.dumps(msgspec.to_builtins(value), separators=(",", ":"), ensure_ascii=False)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobengine.api.ui", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(count=_count, when=_when, seconds=_seconds, pretty=_pretty,
                       compact=_compact)
    env.globals.update(statuses=STATUSES)
    return env


ENV = _environment()


def page(
    request: Request, template: str, context: Mapping[str, Any], *, status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render `template` with the page's common context, with the security headers."""
    csrf = csrf_for(request)
    values = {"request": request, "csrf": csrf, "session": session_info(request),
              "path": request.url.path, **context}
    body = ENV.get_template(template).render(values)
    response = HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS,
                                                               **(headers or {})})
    ensure_csrf_cookie(request, response, csrf)
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    """An error as a page (what the dashboard shows instead of the API's JSON body)."""
    return page(request, "error.html", {"title": f"Error {status}", "status": status,
                                        "message": message, "watch": "", "cursor": ""},
                status=status)
