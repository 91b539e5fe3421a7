"""The dashboard at /ui: static files from this folder and uPlot from the npm package that
`make install` puts in service/ui/node_modules (package.json pins it). No server of its own and no
private routes: the pages call the public API with the user's key, like the SDK."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect
from litestar.router import Router
from litestar.static_files import create_static_files_router

HERE = Path(__file__).parent
STATIC = HERE / "static"
VENDOR = HERE / "node_modules" / "uplot" / "dist"
# Everything from this origin: a CDN reference could not load in an air-gapped cluster, and the
# policy makes the browser refuse one here too. Inline styles only (progress bars, uPlot).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@get("/", include_in_schema=False)
async def to_dashboard() -> Redirect:
    return Redirect("/ui/")


def dashboard() -> list[Router | HTTPRouteHandler]:
    """The routes to add to the app: /ui/* (files, index.html for /ui/) and / -> /ui/."""
    files = create_static_files_router(path="/ui", directories=[STATIC, VENDOR], html_mode=True,
                                       name="dashboard", after_request=_secure)
    return [files, to_dashboard]
