"""The web page at `/`: a server-rendered shell, a little plain JavaScript, no build step.

The shell and its static files need no token (a browser must be able to load them to ask for
one); the data comes from the JSON endpoints, which stay behind the token. The script keeps the
token in the browser session (sessionStorage) and sends it as `Authorization: Bearer`.
"""

from __future__ import annotations

import math

from flask import Blueprint, Response, render_template, request

from .api import broker_version

web = Blueprint("web", __name__, template_folder="templates", static_folder="static",
                static_url_path="/static")

PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = ("/",)
DEFAULT_REFRESH_S = 2.0
# Same origin only: no CDN, no inline script, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def is_public(path: str) -> bool:
    """The page shell and its assets, which the browser loads before it has a token."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _refresh_seconds() -> float:
    """`?refresh=S` sets the refresh period (0.5 to 300 s); anything else gives the default."""
    try:
        value = float(request.args.get("refresh", DEFAULT_REFRESH_S))
    except ValueError:
        return DEFAULT_REFRESH_S
    return min(max(value, 0.5), 300.0) if not math.isnan(value) else DEFAULT_REFRESH_S


@web.get("/")
def index() -> Response:
    html = render_template("index.html", version=broker_version(),
                           refresh_ms=int(_refresh_seconds() * 1000))
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
