"""Running the web app under uvicorn until Ctrl-C or SIGTERM (the CLI's serve commands).

uvicorn's graceful shutdown waits for every request in progress before it stops. An open
preview page always has one: its live-reload long poll, which waits up to
`dripmail.web.preview.LONG_POLL_SECONDS` for a file to change. So a stop signal first wakes
those waiters (they answer 503 "stopping" at once, and the page keeps asking until a server is
back), then lets uvicorn shut down as usual.
"""

from __future__ import annotations

import errno
import socket
from types import FrameType
from typing import Any

from starlette.applications import Starlette

from dripmail.errors import InputError


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free port the system picks), for `run`.

    Bound as uvicorn binds (SO_REUSEADDR, IPv6 for an address with a colon), so a port whose
    last server stopped a moment ago (its connections in TIME-WAIT for a minute) is free, as
    it is to uvicorn; and the real port is known before anything is printed. Raises
    InputError with one line when the port is taken or the address is not this machine's.
    """
    address = host.strip().strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} is in use on {host}: stop what listens there, or pick another "
                "port with --port"
            ) from None
        raise InputError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def port_of(sock: socket.socket) -> int:
    """The port `sock` is bound to (the one the system picked for port 0)."""
    return int(sock.getsockname()[1])


def run(app: Starlette, sock: socket.socket, **options: Any) -> None:
    """Serve `app` on `sock` (from `bind`) until a stop signal; `options` go to
    `uvicorn.Config`."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            wake_long_polls(app)
            super().handle_exit(sig, frame)

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", **options)
    with sock:
        Server(config).run(sockets=[sock])


def wake_long_polls(app: Starlette) -> None:
    """Stop the live preview's file watcher, if it runs: its long polls answer at once."""
    state = getattr(app.state.ctx, "preview_state", None)
    if state is not None:
        state.close()
