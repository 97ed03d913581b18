"""User-facing errors: anything raised as MemseInputError is reported by the CLI as one line, exit code 2."""


class MemseInputError(ValueError):
    """Bad user input (model, inputs, flags). The message names the culprit in one line."""


class DomainError(ValueError):
    """An analysis met an input outside a function's domain (Sqrt of a mean <= 0, division by a mean of 0).
    Raised by a rule's moments without its node's name; the moments pass re-raises it as a MemseInputError
    naming the node."""
