"""User-facing errors: each names the file, row or setting at fault and the problem."""


class GeoembedError(ValueError):
    """An input problem the user can fix. The CLI prints the message without a traceback."""


class ConfigError(GeoembedError):
    """A configuration file or setting is invalid."""


class InputError(GeoembedError):
    """An input data file is missing, unreadable or malformed."""
