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


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Interrupted in the main thread of this process (as SIGINT raises
    KeyboardInterrupt); a forked child (a writer pool, a loader worker) keeps the default: it just ends."""
    import os
    import signal

    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:  # a forked child inherited this handler: die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not break the cleanup of the first
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handler)
