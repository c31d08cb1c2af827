"""`serve` and `form`: the web edge (sign-up, links in emails, webhooks) and its blog form."""

from __future__ import annotations

import typer

from dripmail.cli import state
from dripmail.cli.exits import stopped_by_ctrl_c


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(
        8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port, printed)."
    ),
    preview: bool = typer.Option(
        False,
        "--preview",
        help="Also serve /preview and /report (local use; never on a public server).",
    ),
) -> None:
    """Serve sign-up, confirm/unsubscribe/preferences links and provider webhooks.

    Put it behind a reverse proxy with TLS and set DRIPMAIL_PUBLIC_URL to its public address.
    Ctrl-C or SIGTERM stops it once the requests in progress are answered (exit 130).
    """
    import logging

    from dripmail.web import serving
    from dripmail.web.app import create_app

    # One line per request and per refused webhook from dripmail itself (tokens redacted);
    # libraries (Alembic, uvicorn) only speak up for warnings.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("dripmail")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    app = create_app(state.project, state.settings, preview=preview)
    for line in content_warning(app.state.ctx.app.content_problems()):
        typer.echo(line, err=True)
    if preview and not is_loopback(host):
        typer.echo(exposed_warning(host), err=True)
    # Bound here, not by uvicorn: a port in use is one line, and port 0 prints the real one.
    sock = serving.bind(host, port)
    port = serving.port_of(sock)
    typer.echo(
        f"serving on http://{host}:{port}/ (links in emails use {state.settings.public_url})"
        + (
            f"; preview on http://{host}:{port}/preview, report on http://{host}:{port}/report"
            if preview
            else ""
        )
    )
    # proxy_headers: the client address comes from X-Forwarded-For when the proxy is trusted
    # (FORWARDED_ALLOW_IPS, default 127.0.0.1); the sign-up rate limit keys on it.
    with stopped_by_ctrl_c():
        serving.run(app, sock, access_log=False, proxy_headers=True)


def content_warning(problems: list[str]) -> list[str]:
    """What `serve` prints when it starts with a course whose files have errors: it serves
    anyway (unsubscribe, preferences and webhooks need no lesson text), and says what waits."""
    if not problems:
        return []
    from dripmail.cli.printing import visible

    head = (
        "warning: the course has errors; serving anyway (unsubscribe, preferences and "
        "webhooks work; sign-ups are stored, their confirmation emails are not sent and "
        "confirm links answer 503 until the files are fixed, which needs no restart):"
    )
    return [head, *(f"  {visible(line)}" for line in problems)]


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches ("127.0.0.1", "::1", "localhost"); a
    name or any other address (0.0.0.0 listens on every interface) counts as reachable."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def exposed_warning(host: str) -> str:
    """The one line `serve --preview` prints when the preview and the report are reachable
    from other machines (they need no login)."""
    return (
        f"warning: --preview on {host} lets anyone who reaches this address read /preview and "
        "/report (no login); use --host 127.0.0.1 unless that is meant"
    )


def form() -> None:
    """Print an HTML sign-up form to paste into the blog (with the time-zone script)."""
    from dripmail.web.context import WebContext
    from dripmail.web.signup import embed_form

    typer.echo(embed_form(WebContext(state.project, state.settings)), nl=False)


def register(app: typer.Typer) -> None:
    """Attach the web commands."""
    app.command("serve")(serve)
    app.command("form")(form)
