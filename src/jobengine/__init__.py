"""jobengine: a Postgres-backed job lifecycle engine.

The database keeps the lifecycle honest: it refuses illegal transitions and
writes the history, the timeline and a NOTIFY for every change, whoever makes
it. The daemon (`jobengine run`) schedules, claims and runs the jobs.
"""

__version__ = "0.4.0"
