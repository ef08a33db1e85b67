"""A Flask app behind the frontends (tests/frontends.rs): the URLs it builds for itself."""

from flask import Flask, url_for

app = Flask(__name__)


@app.get("/flask/url")
def external_url():
    # What a redirect or a link in an e-mail would use: scheme, Host (with its port), mount.
    return url_for("external_url", _external=True) + "\n"
