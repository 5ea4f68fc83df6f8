"""The one exception type for problems a user can fix."""


class DissectError(Exception):
    """An error caused by user input; the message says what is wrong and how to fix it.

    The CLI prints these without a traceback and exits with status 2.
    """


def interrupted_status(error: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by ``error``: 128 + the signal's number.

    Interrupted passes raise ``KeyboardInterrupt("SIGTERM")`` after a SIGTERM (143); Ctrl-C
    gives 130.
    """
    return 143 if error.args == ("SIGTERM",) else 130
