"""Installed only into the virtualenv of the pip-installed scgi-wsgi, for its tests."""

MARK = "installed in the pip-installed command's virtualenv"
