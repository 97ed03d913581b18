"""User-facing errors: anything raised as MemseInputError is reported by the CLI as one line, exit code 2."""


class MemseInputError(ValueError):
    """Bad user input (model, inputs, flags). The message names the culprit in one line."""
