"""A small Bottle app for tests/frameworks.rs (the same routes as fw_flask and fw_django)."""

import json
import os

import bottle

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fw_static")

app = bottle.Bottle()


@app.get("/hello")
def hello():
    return "Hello from Bottle"


@app.get("/user/<name>")
def user(name):
    return "user: %s (%d characters)" % (name, len(name))


@app.get("/query")
def query():
    bottle.response.content_type = "application/json"
    params = bottle.request.query.decode()
    return json.dumps({k: params.getall(k) for k in params})


@app.post("/form")
def form():
    forms = bottle.request.forms.decode()
    bottle.response.content_type = "application/json"
    return json.dumps({k: forms.getall(k) for k in forms})


@app.post("/json")
def json_echo():
    data = bottle.request.json
    bottle.response.status = 201
    bottle.response.content_type = "application/json"
    return json.dumps({"got": data, "keys": sorted(data)})


@app.get("/cookie")
def cookie():
    bottle.response.set_cookie("seen", "yes", httponly=True)
    bottle.response.set_cookie("lang", "fr", path="/cookie")
    return "flavour=%s" % bottle.request.get_cookie("flavour")


@app.get("/redirect")
def to_hello():
    bottle.redirect("/hello")


@app.get("/stream")
def stream():
    bottle.response.content_type = "text/plain"
    for i in range(200):
        yield "streamed line %d\n" % i


@app.get("/download")
def download():
    return bottle.static_file("download.txt", root=STATIC, download="download.txt")


application = app
