"""A handler module that fails while being imported."""

VALUE = 1 // 0
