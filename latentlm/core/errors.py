"""User-facing errors: one line that says what is wrong and how to fix it."""


class UserError(Exception):
  """A mistake in the user's input (flags, files, workdir), not a bug.

  The command-line entry points catch it, print its message as one line and
  exit non-zero, without a traceback.
  """
