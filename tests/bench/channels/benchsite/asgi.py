"""The ASGI application: WebSocket routes only, no HTTP views."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchsite.consumers import EchoConsumer, RoomConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "websocket": URLRouter([
        path("echo/", EchoConsumer.as_asgi()),
        path("websock1/", RoomConsumer.as_asgi()),
    ]),
})
