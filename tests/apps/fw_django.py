"""A small Django app in one module for tests/frameworks.rs (the same routes as fw_flask
and fw_bottle). Importing it configures Django."""

import json
import os

import django
from django.conf import settings

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fw_static")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-a-secret: a test app",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
    )
    django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path  # noqa: E402
from django.views.decorators.http import require_GET, require_POST, require_safe  # noqa: E402


@require_safe
def hello(request):
    return HttpResponse("Hello from Django", content_type="text/plain; charset=utf-8")


@require_GET
def user(request, name):
    return HttpResponse("user: %s (%d characters)" % (name, len(name)), content_type="text/plain; charset=utf-8")


@require_GET
def query(request):
    return JsonResponse({k: request.GET.getlist(k) for k in request.GET})


@require_POST
def form(request):
    return JsonResponse({k: request.POST.getlist(k) for k in request.POST})


@require_POST
def json_echo(request):
    data = json.loads(request.body)
    return JsonResponse({"got": data, "keys": sorted(data)}, status=201)


@require_GET
def cookie(request):
    resp = HttpResponse("flavour=%s" % request.COOKIES.get("flavour"), content_type="text/plain")
    resp.set_cookie("seen", "yes", httponly=True)
    resp.set_cookie("lang", "fr", path="/cookie")
    return resp


@require_GET
def to_hello(request):
    return HttpResponseRedirect("/hello")


@require_GET
def stream(request):
    return StreamingHttpResponse(("streamed line %d\n" % i for i in range(200)), content_type="text/plain")


@require_GET
def download(request):
    return FileResponse(open(os.path.join(STATIC, "download.txt"), "rb"), as_attachment=True, filename="download.txt")


urlpatterns = [
    path("hello", hello),
    path("user/<str:name>", user),
    path("query", query),
    path("form", form),
    path("json", json_echo),
    path("cookie", cookie),
    path("redirect", to_hello),
    path("stream", stream),
    path("download", download),
]

application = get_wsgi_application()
