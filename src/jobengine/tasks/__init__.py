"""The Python API: tasks as decorated functions, deferred in the caller's transaction.

    import jobengine

    app = jobengine.App()

    @app.task(max_retries=3)
    async def send_email(to: str, subject: str = "hi") -> None: ...

    job_id = await send_email.defer(to="a@b.example")

`App` (in `tasks.app`) registers tasks and holds the app's own connection;
`Task` (`tasks.task`) defers jobs; `tasks.arguments` turns arguments into a
payload and back; `tasks.connections` inserts through asyncpg, psycopg or
SQLAlchemy connections; `tasks.running` is `current_job()`; `tasks.waiting`
is `App.wait`'s shared LISTEN.
"""

from jobengine.tasks.app import App
from jobengine.tasks.running import CurrentJob, current_job
from jobengine.tasks.task import Configured, Task, TaskOptions

__all__ = ["App", "Configured", "CurrentJob", "Task", "TaskOptions", "current_job"]
