"""The two kinds of failure charlm reports to its users.

Library code raises these with a one-line message that names the file or option at
fault; `cli.main` prints the message on stderr and exits with `exit_code`, without a
traceback unless CHARLM_DEBUG=1.
"""


class CharlmError(Exception):
    """Something went wrong while running (bad file contents, full disk...): exit 1."""

    exit_code = 1


class UsageError(CharlmError):
    """The command line asked for something impossible (missing file, bad size...): exit 2."""

    exit_code = 2
