"""A Flask app whose request logs go to LogQueue.

    lq broker --port 5000 &
    flask --app examples/flask_app.py run --port 8000
    curl localhost:8000/orders/7

Configure logging before the app is created, so Flask's own logger uses the root handlers.
"""

import logging.config

from flask import Flask, request

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "logqueue": {
            "class": "lq_logging.LogQueueHandler",
            "url": ["http://127.0.0.1:5000"],
            "topic": "example-flask",
            "fields": {"service": "orders-api", "env": "dev"},
        },
    },
    "root": {"level": "INFO", "handlers": ["logqueue"]},
})


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/orders/<int:order_id>")
    def get_order(order_id: int):
        app.logger.info("order %d read", order_id,
                        extra={"order_id": order_id, "path": request.path})
        return {"order_id": order_id}

    return app


app = create_app()
