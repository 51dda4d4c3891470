"""The ``domain`` values of a joint dataset's rows: which head a row's label belongs to."""

SOURCE, TARGET = 0, 1

__all__ = ["SOURCE", "TARGET"]
