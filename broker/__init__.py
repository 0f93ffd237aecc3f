"""The LogQueue broker: a Flask HTTP service over SQLite or PostgreSQL.

`create_app` is imported lazily: `lq broker` must set up the metrics directory for gunicorn's
workers before anything imports prometheus_client.
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
