"""Errors a user can fix. The CLI prints them as one line and exits with code 2.

Each carries the name of what was wrong (file, field, column) in its message, so an
operator never has to read a traceback to find the bad input.
"""


class UserError(Exception):
    """Bad input from the user: data, options, config or a model bundle."""

    exit_code = 2


class DataError(UserError):
    """A CSV or data source that cannot be used as given."""


class BundleError(UserError):
    """A model bundle that is missing, truncated, tampered with or inconsistent."""


class ConfigError(UserError):
    """A configuration file or value that does not validate."""
