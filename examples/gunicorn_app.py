"""A WSGI app served by gunicorn, logging to LogQueue from every worker.

    lq broker --port 5000 &
    cd examples && gunicorn -c gunicorn_app.py -w 4 -b 127.0.0.1:8000 gunicorn_app:app
    curl localhost:8000/

This file is both the gunicorn config (``logconfig_dict``) and the app. gunicorn applies
``logconfig_dict`` in the arbiter and then forks the workers: each worker gets its own
queue, sender thread, producer id and spool file (``os.register_at_fork``), and nothing the
arbiter had queued is sent twice. Do not use ``--preload`` with an app that opens
connections at import; the handler itself is fork-safe either way.
"""

import logging

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "logqueue": {
            "class": "lq_logging.LogQueueHandler",
            "url": "http://127.0.0.1:5000",
            "topic": "example-gunicorn",
            "fields": {"service": "gunicorn-example"},
        },
    },
    "root": {"level": "INFO", "handlers": ["logqueue"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["logqueue"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["logqueue"], "propagate": False},
    },
}
accesslog = "-"

log = logging.getLogger("example.gunicorn")


def app(environ, start_response):
    log.info("%s %s", environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged\n"]
