"""The project's own exception types; the CLI turns them into one line and exit code 1."""


class MlrplError(Exception):
    """Base of every error mlrpl reports to a user (message names file, record and fix)."""


class BadInputError(MlrplError):
    """A raw or built file is malformed, inconsistent or missing."""


class FingerprintMismatchError(BadInputError):
    """Two artefacts claim to come from different manifests."""


class AlreadyExistsError(MlrplError):
    """An output exists with other content; --force replaces it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (Slurm's time limit, `docker stop`): handled like Ctrl-C everywhere, so each
    command removes what it made; the CLI exits 128 + the signal's number with `hint` (how to continue)."""

    def __init__(self, signum: int = 2, hint: str = ""):
        super().__init__(signum, hint)
        self.signum, self.hint = signum, hint


_PENDING = [0]  # the signal number of a SIGTERM received (0: none)


def pending() -> int:
    """The signal number of a SIGTERM this process received (0: none)."""
    return _PENDING[0]


def check_interrupt() -> None:
    """Raise Interrupted again if a SIGTERM came: its first raise can land where Python ignores
    exceptions (a fork or __del__ callback); the long loops call this once per step."""
    if _PENDING[0]:
        raise Interrupted(_PENDING[0])


def quiet_exit() -> None:
    """The process is ending on a signal: a helper thread of multiprocessing (the loader's fd sharer, whose
    worker may go away mid-transfer) reports through sys.excepthook; it prints nothing under the one line."""
    import sys

    sys.excepthook = lambda *exc: None


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Interrupted in the main thread of this process (as SIGINT raises
    KeyboardInterrupt); a forked child that inherits it (a writer pool) just ends, as by default."""
    import os
    import signal
    import sys

    pid, _PENDING[0] = os.getpid(), 0

    def handler(signum, frame):
        if os.getpid() != pid:  # a forked child inherited this handler: die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not break the cleanup of the first
        _PENDING[0] = signum
        quiet_exit()
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
    default_hook = sys.unraisablehook

    def unraisable(u):  # raised where Python ignores exceptions (a fork callback): silent, check_interrupt re-raises it
        if not isinstance(u.exc_value, Interrupted):
            default_hook(u)

    sys.unraisablehook = unraisable
