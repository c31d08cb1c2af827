"""Running the web app under uvicorn until Ctrl-C or SIGTERM (the CLI's serve commands).

uvicorn's graceful shutdown waits for every request in progress before it stops. An open
preview page always has one: its live-reload long poll, which waits up to
`dripmail.web.preview.LONG_POLL_SECONDS` for a file to change. So a stop signal first wakes
those waiters (they answer 503 "stopping" at once, and the page keeps asking until a server is
back), then lets uvicorn shut down as usual.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from starlette.applications import Starlette


def run(app: Starlette, host: str, port: int, **options: Any) -> None:
    """Serve `app` on host:port until a stop signal; `options` go to `uvicorn.Config`."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            wake_long_polls(app)
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", **options)).run()


def wake_long_polls(app: Starlette) -> None:
    """Stop the live preview's file watcher, if it runs: its long polls answer at once."""
    state = getattr(app.state.ctx, "preview_state", None)
    if state is not None:
        state.close()
