"""The service's own exceptions."""


class ConfigError(Exception):
    """The configuration cannot be used; the message says which file and why."""
