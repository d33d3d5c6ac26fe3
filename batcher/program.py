"""The ``batcher`` program's first lines: a stop signal that comes while it is still loading
(Ctrl-C at once, a scheduler's SIGTERM) is kept for :func:`batcher.cli.entry`, which stops with
exit 3, rather than a traceback through an import or a death by that signal."""

import signal


def entry() -> None:
    early: list[int] = []

    def keep(signum: int, frame: object) -> None:  # noqa: ARG001
        early.append(signum)

    # stopping.STOP_SIGNALS, named here: importing anything first would widen the window
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, keep)
    from .cli import entry as run

    run(early)
