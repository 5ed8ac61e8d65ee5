"""The one error type the CLI turns into a one-line message and exit code 2."""


class InpoError(Exception):
    """A user-facing error: bad input, bad config, missing file. Message names file/field/row."""
