"""Settings of the benchmark's Channels site: nothing but WebSocket routes."""
import os

SECRET_KEY = "forkd-bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "benchsite.asgi.application"
USE_TZ = True
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"level": "WARNING"}}

_redis = os.environ.get("BENCH_REDIS")
if _redis:
    _host, _port = _redis.rsplit(":", 1)
    CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [(_host, int(_port))]},
    }}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
