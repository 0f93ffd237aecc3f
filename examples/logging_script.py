"""A plain script that logs to LogQueue.

Run a broker, then this script, then read the topic back:

    lq broker &
    python examples/logging_script.py      # the handled error's traceback also goes to stderr
    lq tail example-script -n 20           # the JSON records, as the broker stores them

With the broker down, the records wait in the spool and are sent by the next run.
"""

import logging
import logging.config

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "logqueue": {
            "class": "lq_logging.LogQueueHandler",
            "url": "http://127.0.0.1:5000",
            "topic": "example-script",
            "fields": {"service": "example-script", "env": "dev"},
        },
        "console": {"class": "logging.StreamHandler"},
    },
    "root": {"level": "INFO", "handlers": ["logqueue", "console"]},
})

log = logging.getLogger("example")

if __name__ == "__main__":
    for n in range(10):
        log.info("step %d of 10", n + 1, extra={"step": n + 1})
    try:
        raise ValueError("a bad value")
    except ValueError:
        log.exception("a handled error")
    # Nothing else to do: the handler flushes at exit (atexit), waiting at most `timeout`.
