"""``python -m scgi_wsgi ARGS``: the same as the ``scgi-wsgi`` command."""

from scgi_wsgi import main

main()
