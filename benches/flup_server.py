"""Serves benches/app.py with flup's threaded SCGI server: `python3 flup_server.py PORT`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flup.server.scgi import WSGIServer  # noqa: E402

from app import application  # noqa: E402

if __name__ == "__main__":
    port = int(sys.argv[1])
    WSGIServer(application, bindAddress=("127.0.0.1", port), loggingLevel=40).run()
