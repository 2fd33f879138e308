"""The one exception type users catch for bad input."""


class InvalidInputError(ValueError):
    """Bad input to layertrim: the message names the problem (shape, NaN, sparsity, ...).

    A subclass of ``ValueError`` so generic code that catches ``ValueError`` keeps working.
    """
