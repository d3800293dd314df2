"""The web dashboard at `/ui/`: server-rendered pages over the REST API's stores.

`routes.ROUTES` are mounted by `jobengine.api.app.create_app` beside the
REST API's, under the same `AuthMiddleware` (each route declares the scope
it needs); `routes.on_denied` turns a refusal into a sign-in redirect or an
error page. Templates are Jinja2 (`templates/`), the browser's script and
style plain files (`static/`, with the vendored chart library under
`static/vendor/`): no build step, nothing fetched from elsewhere.
"""
