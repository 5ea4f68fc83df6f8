"""The one exception type for problems a user can fix."""


class DissectError(Exception):
    """An error caused by user input; the message says what is wrong and how to fix it.

    The CLI prints these without a traceback and exits with status 2.
    """
