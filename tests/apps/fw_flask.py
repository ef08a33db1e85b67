"""A small Flask app for tests/frameworks.rs (the same routes as fw_django and fw_bottle)."""

import os

from flask import Flask, Response, jsonify, make_response, redirect, request, send_file

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fw_static")

app = Flask(__name__)


@app.get("/hello")
def hello():
    return "Hello from Flask"


@app.get("/user/<name>")
def user(name):
    return "user: %s (%d characters)" % (name, len(name))


@app.get("/query")
def query():
    return jsonify({k: request.args.getlist(k) for k in request.args})


@app.post("/form")
def form():
    return jsonify({k: request.form.getlist(k) for k in request.form})


@app.post("/json")
def json_echo():
    data = request.get_json()
    return jsonify({"got": data, "keys": sorted(data)}), 201


@app.get("/cookie")
def cookie():
    resp = make_response("flavour=%s" % request.cookies.get("flavour"))
    resp.set_cookie("seen", "yes", httponly=True)
    resp.set_cookie("lang", "fr", path="/cookie")
    return resp


@app.get("/redirect")
def to_hello():
    return redirect("/hello")


@app.get("/stream")
def stream():
    def lines():
        for i in range(200):
            yield "streamed line %d\n" % i

    return Response(lines(), mimetype="text/plain")


@app.get("/download")
def download():
    return send_file(os.path.join(STATIC, "download.txt"), as_attachment=True, download_name="download.txt")


application = app
