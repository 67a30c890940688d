"""The one error path: every expected failure is a WeightsmithError; the CLI prints `error: ...` and exits 2."""


class WeightsmithError(Exception):
    """Bad usage or bad input. The message is one line a user can act on."""


class BadInput(WeightsmithError):
    """A file or directory that is missing, malformed, inconsistent or unsafe."""


class Unsupported(WeightsmithError):
    """A valid input that weightsmith does not handle (yet)."""
