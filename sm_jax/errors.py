"""The one base of every user-facing error: the command line prints it as a single `error:` line and exits 2."""


class UserError(Exception):
    """Bad input or a run that cannot proceed as asked (one line, no traceback)."""


class ConfigError(UserError, ValueError):
    """An invalid configuration: names the flag and the value."""
