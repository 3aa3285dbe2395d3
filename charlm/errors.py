"""The two kinds of failure charlm reports to its users.

Library code raises these with a one-line message that names the file or option at
fault; `cli.main` prints the message on stderr and exits with `exit_code`, without a
traceback unless CHARLM_DEBUG=1.
"""


class CharlmError(Exception):
    """Something went wrong while running (a full disk, a diverged or interrupted run, a failed
    download): exit 1."""

    exit_code = 1


class UsageError(CharlmError):
    """Bad input: a file or option value that cannot be used (missing, empty, binary,
    undecodable or damaged file; nan, infinite or out-of-range number...): exit 2."""

    exit_code = 2
