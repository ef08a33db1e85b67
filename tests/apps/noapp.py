"""A handler module with neither `application` nor `wmain`."""

NOTHING = None
