"""The broadcaster: a socket-free fan-out :class:`Hub` and the websocket + HTTP
:class:`Server` that serves it (``/ws``, ``/overlay``, ``/healthz``, ``/metrics``)."""

from streamcap.server.app import Server
from streamcap.server.hub import ClientHandle, DisconnectReason, Hub

__all__ = ["ClientHandle", "DisconnectReason", "Hub", "Server"]
