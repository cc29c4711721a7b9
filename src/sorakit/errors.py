"""Errors a user can fix. The CLI prints them as one line on stderr and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: a path, a value, a preset name. Never shown with a traceback."""


class ConfigError(UserError, ValueError):
    """An invalid configuration: unknown key, wrong type, missing preset."""
