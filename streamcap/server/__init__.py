"""The broadcaster: a socket-free fan-out :class:`Hub` and the websocket + HTTP :class:`Server`
that serves it (routes under :mod:`streamcap.server.routes`, access decided by the table in
:mod:`streamcap.server.access`)."""

from streamcap.server.app import Server
from streamcap.server.hub import ClientHandle, DisconnectReason, Hub

__all__ = ["ClientHandle", "DisconnectReason", "Hub", "Server"]
