"""HTTP and websocket server for the canvas and for running workflows over HTTP.

`create_app(...)` builds the aiohttp application (see `app` for the routes); `serve(...)`
is what `noodle serve` runs.
"""

from graph_runtime.server.app import create_app
from graph_runtime.server.main import serve

__all__ = ["create_app", "serve"]
