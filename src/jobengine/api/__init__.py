"""The REST API: a Starlette app over the store, with its own wire structs."""
