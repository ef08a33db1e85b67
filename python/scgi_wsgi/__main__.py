"""``python -m scgi_wsgi ARGS``: the same as the ``scgi-wsgi`` command."""

from scgi_wsgi import main

# Only when run: a child that multiprocessing's spawn or forkserver start method prepares may
# import this module again, and must not start a second server.
if __name__ == "__main__":
    main()
