"""The errors segd raises, and the exit codes the CLI (and systemd units) map them to.

    SegdError            base class; `exit_code` says how the CLI ends
    ├── ConfigError      the configuration (file, environment variable or flag) is invalid
    ├── BadInput         a dropped file cannot be segmented as it is (retrying will not help)
    └── ModelError       the model cannot be built or its checkpoint does not fit it
        └── FetchError   an official checkpoint could not be downloaded or verified

Messages are written for the person who dropped the file or wrote the config: they name the
file or key, say what is wrong, and, where there is one, the fix.
"""

EXIT_OK = 0
EXIT_FAILED_INPUTS = 1  # the command ran, but some inputs failed
EXIT_CONFIG = 2  # fix the configuration before restarting (systemd: RestartPreventExitStatus)
EXIT_MODEL = 3  # the model or its checkpoint is missing or broken


class SegdError(Exception):
    """Base class of segd's own errors."""

    exit_code = EXIT_FAILED_INPUTS


class ConfigError(SegdError):
    """Raised when the configuration is invalid; the message names the key, value and allowed values."""

    exit_code = EXIT_CONFIG


class BadInput(SegdError):
    """Raised when an input file cannot be segmented: undecodable, too large, wrong size, ...

    `path` is the offending file and `reason` a one-line explanation; str() gives both.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(SegdError):
    """Raised when the model cannot be built or the checkpoint does not match the configured model."""

    exit_code = EXIT_MODEL


class FetchError(ModelError):
    """Raised when an official checkpoint cannot be downloaded or fails verification."""
