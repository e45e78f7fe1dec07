"""The one exception type for invalid user input (configs, data, CLI values)."""


class ConfigError(ValueError):
    """Invalid user input, raised before any compute.

    The message names the offending value and the fix.
    """
