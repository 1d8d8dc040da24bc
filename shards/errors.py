"""The one error type for bad input in `shards` and `datasets`."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message starts with the offending file path and says what is wrong."""
