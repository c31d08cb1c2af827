"""The exit codes the commands share (README, "Exit codes"), and SIGTERM (and, for the
servers, a SIGINT a shell had set to be ignored) taken as Ctrl-C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import typer

# Finished, but something needs a person: deliveries failed or wait for review, the provider
# could not be reached, import rows were refused. A cron job or monitor can alert on it
# without parsing output.
EXIT_ATTENTION = 3
# Stopped by Ctrl-C or SIGTERM, cleanly (the shell's 128 + SIGINT): re-running continues.
EXIT_STOPPED = 130


def ask_or_stop(question: str, nothing_done: str) -> None:
    """Ask `question` (y/N) on the terminal; on no, print `nothing_done` (e.g. "nothing was
    sent") and exit 1, in the command's own words instead of click's bare "Aborted."."""
    if not typer.confirm(question):
        typer.echo(nothing_done)
        raise typer.Exit(1)


@contextmanager
def _raising_keyboard_interrupt(signum: int) -> Iterator[None]:
    """Within: signal `signum` raises KeyboardInterrupt (Ctrl-C's own handler). The previous
    handler comes back afterwards (tests run the CLI inside their own process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signum, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_as_ctrl_c() -> AbstractContextManager[None]:
    """Within: SIGTERM (systemd, `docker stop`, `kill`) stops the command as Ctrl-C does.

    Killed outright, a run or broadcast is still safe (its claims wait out their lease,
    anything in flight is reconciled next time), but a stop the service manager asks for
    should end as cleanly as Ctrl-C: claims not yet handed over go back to the queue at once.
    """
    return _raising_keyboard_interrupt(signal.SIGTERM)


def sigint_even_if_ignored() -> AbstractContextManager[None]:
    """Within: SIGINT raises KeyboardInterrupt, also in a process that started with SIGINT
    ignored.

    A shell starts a script's background job (`dripmail preview &`) with SIGINT ignored, and
    Python then leaves it ignored. For the servers that choice is gone anyway: uvicorn installs
    its own SIGINT handler and shuts down on `kill -INT`, but then restores the ignored
    disposition and raises SIGINT into it, so the command ended with exit 0 and no "stopped".
    An operator who sends SIGINT on purpose means stop: it now ends as SIGTERM and Ctrl-C do.
    """
    return _raising_keyboard_interrupt(signal.SIGINT)


@contextmanager
def stop_signals_as_ctrl_c() -> Iterator[None]:
    """Within: SIGTERM and SIGINT (also one a shell set to be ignored: a script's
    `dripmail run > out 2>&1 &` then `kill -INT $!`) raise KeyboardInterrupt, so `run` and
    `broadcast` stop as they do on Ctrl-C: the chunk at the provider recorded, the rest back
    in the queue, "stopped", exit 130. Without it a background `run` ignored `kill -INT`."""
    with sigterm_as_ctrl_c(), sigint_even_if_ignored():
        yield


@contextmanager
def stopped_by_ctrl_c() -> Iterator[None]:
    """Within: Ctrl-C, SIGINT (`kill -INT`, even to a background job that inherited it
    ignored: `sigint_even_if_ignored`) or SIGTERM ends the command with "stopped" and exit
    130, as `run` and `broadcast` end. For the servers (`serve`, `preview`, `report --serve`):
    uvicorn shuts down gracefully on either signal, then raises it again once its own handlers
    are gone, which SIGTERM's default turned into a silent death (exit -15), SIGINT into
    "Interrupted." and an inherited ignored SIGINT into exit 0."""
    try:
        with stop_signals_as_ctrl_c():
            yield
    except KeyboardInterrupt:
        typer.echo("stopped")
        raise typer.Exit(EXIT_STOPPED) from None


@contextmanager
def stop_signals_set(stop: threading.Event) -> Iterator[None]:
    """Within: Ctrl-C, SIGINT (also one a shell set to be ignored, as `sigint_even_if_ignored`)
    and SIGTERM set `stop` instead of raising KeyboardInterrupt, for a command that stops at
    a point of its own choosing (`subscribers import`, between two committed batches): an
    exception raised just after a commit could not tell whether the batch went in."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
