"""The REST API: a Starlette app over the store, with its own wire structs.

`jobengine.api.app.create_app(pool, http, readiness=...)` builds it;
`jobengine.api.server.serve(app, host, port)` runs it with uvicorn inside the
caller's task group. The API never imports the daemon: the daemon passes
what it knows (its readiness) in. This package's `__init__` stays empty so
that reading `[http]` settings (`jobengine.api.config`) does not import the
web stack.
"""
