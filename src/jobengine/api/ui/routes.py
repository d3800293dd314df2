"""The dashboard's routes, its static files, and how it answers a refused request."""

from __future__ import annotations

from importlib import resources

from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from jobengine.api.errors import ApiError
from jobengine.api.tokens import SESSION_COOKIE
from jobengine.api.ui import actions, pages
from jobengine.api.ui.render import SECURITY_HEADERS, error_page
from jobengine.api.ui.session import clear_session

#: The dashboard's folder of static files (inside the installed package).
STATIC_DIR = str(resources.files("jobengine.api.ui").joinpath("static"))

async def _home(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


class _StaticFiles(StaticFiles):
    """The static files, with the dashboard's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update({k: v for k, v in SECURITY_HEADERS.items()
                                 if k != "Cache-Control"})
        return response


#: Public: the sign-in form and the static files (the dashboard's own script
#: and style and the vendored library, the same in every installation).
ROUTES: list[BaseRoute] = [
    Route("/ui", _home, methods=["GET"], name="ui_home"),
    Route("/ui/", pages.overview, methods=["GET"], name="ui_overview"),
    Route("/ui/jobs", pages.jobs, methods=["GET"], name="ui_jobs"),
    Route("/ui/jobs/bulk", actions.bulk, methods=["POST"], name="ui_jobs_bulk"),
    Route("/ui/jobs/{id:int}", pages.job, methods=["GET"], name="ui_job"),
    Route("/ui/jobs/{id:int}/cancel", actions.cancel, methods=["POST"],
          name="ui_job_cancel"),
    Route("/ui/jobs/{id:int}/retry", actions.retry, methods=["POST"], name="ui_job_retry"),
    Route("/ui/queues", pages.queues, methods=["GET"], name="ui_queues"),
    Route("/ui/queues/{name}/pause", actions.pause_queue, methods=["POST"],
          name="ui_queue_pause"),
    Route("/ui/queues/{name}/resume", actions.resume_queue, methods=["POST"],
          name="ui_queue_resume"),
    Route("/ui/schedules", pages.schedules, methods=["GET"], name="ui_schedules"),
    Route("/ui/schedules/{name}/pause", actions.pause_schedule, methods=["POST"],
          name="ui_schedule_pause"),
    Route("/ui/schedules/{name}/resume", actions.resume_schedule, methods=["POST"],
          name="ui_schedule_resume"),
    Route("/ui/login", actions.login_form, methods=["GET"], name="ui_login_form"),
    Route("/ui/login", actions.login, methods=["POST"], name="ui_login"),
    Route("/ui/logout", actions.logout, methods=["POST"], name="ui_logout"),
    Mount("/ui/static", app=_StaticFiles(directory=STATIC_DIR), name="ui_static"),
]


def is_ui(connection: HTTPConnection) -> bool:
    """Whether a request is for the dashboard."""
    path = connection.url.path
    return path == "/ui" or path.startswith("/ui/")


def on_denied(connection: HTTPConnection, exc: ApiError) -> Response | None:
    """A dashboard page without a valid token goes to the sign-in form; other refusals
    (a `read` token acting: 403) are error pages. The REST API keeps its JSON errors."""
    if not is_ui(connection):
        return None
    request = Request(connection.scope)
    if exc.status == 401 and request.method in ("GET", "HEAD"):
        response: Response = RedirectResponse("/ui/login", status_code=303,
                                              headers=dict(SECURITY_HEADERS))
        if SESSION_COOKIE in request.cookies:
            clear_session(request, response)  # a token no longer configured
        return response
    return error_page(request, exc.status, exc.message)
