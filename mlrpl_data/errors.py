"""The project's own exception types; the CLI turns them into one line and exit code 1."""


class MlrplError(Exception):
    """Base of every error mlrpl reports to a user (message names file, record and fix)."""


class BadInputError(MlrplError):
    """A raw or built file is malformed, inconsistent or missing."""


class FingerprintMismatchError(BadInputError):
    """Two artefacts claim to come from different manifests."""


class AlreadyExistsError(MlrplError):
    """An output exists with other content; --force replaces it."""
