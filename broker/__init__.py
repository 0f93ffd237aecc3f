"""The LogQueue broker: a Flask HTTP service over SQLite or PostgreSQL.

The application factory is `broker.app.create_app`. This package imports nothing itself:
every `lq` command loads `broker.cli`, which must stay light.
"""
