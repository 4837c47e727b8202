"""Errors about the user's input: reported as one line naming the file and the reason."""


class BadInputError(Exception):
    """An input file or annotation that cannot be used; the message names it and says why."""
