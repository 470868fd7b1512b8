"""ZeroMQ endpoints given by the user, checked before any socket is made.

A mistyped endpoint used to surface as a ZMQError traceback in a thread while the process
waited forever (``--connect 127.0.0.1:31001``, no scheme), and a port already taken as a
traceback at start. :func:`check_endpoint` refuses the first with one line naming the form
expected; :func:`check_bindable` finds the second before anything starts, by binding the
address once with a plain socket (ZeroMQ binds TCP with ``SO_REUSEADDR`` too, so an address
this probe gets, ZeroMQ gets, unless something takes it in between).
"""

from __future__ import annotations

import re
import socket

from sxdm_stream.errors import ConfigError

#: the transports we use; ZeroMQ knows more, none of which a detector or viewer speaks
SCHEMES = ("tcp", "ipc", "inproc")
_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/\[\]]+):(?P<port>[^:/]+)$")
_FORM = "tcp://HOST:PORT (e.g. tcp://127.0.0.1:31001), ipc://PATH or inproc://NAME"


def check_endpoint(endpoint: str, option: str, bind: bool = False) -> str:
    """``endpoint`` if it is a usable ZeroMQ endpoint; ConfigError (one line) if not.

    ``option`` names where it was given (``--connect``), for the message. A bind endpoint
    may use ``*`` as host (every interface) and as port (any free one).
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError(f"{option} needs an endpoint of the form {_FORM}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in SCHEMES:
        hint = f": did you mean tcp://{endpoint}?" if not sep and ":" in endpoint else ""
        raise ConfigError(f"{option} {endpoint} is not an endpoint of the form {_FORM}{hint}")
    if scheme != "tcp":
        if not rest:
            raise ConfigError(f"{option} {endpoint} names no {scheme} address")
        return endpoint
    match = _TCP.match(endpoint)
    if match is None:
        raise ConfigError(f"{option} {endpoint} is not of the form tcp://HOST:PORT "
                          "(e.g. tcp://127.0.0.1:31001)")
    host, port = match["host"], match["port"]
    if port == "*" or host == "*":
        if not bind:
            raise ConfigError(f"{option} {endpoint}: '*' only binds; connect to a host and port")
        if port == "*":
            return endpoint
    lowest = 0 if bind else 1                     # binding port 0 takes any free port
    if not port.isdigit() or not lowest <= int(port) < 65536:
        raise ConfigError(f"{option} {endpoint}: the port {port} is not a number from {lowest} "
                          "to 65535")
    return endpoint


def check_bindable(endpoint: str, option: str) -> None:
    """Raise ConfigError (one line) if ``endpoint``'s TCP address is already taken.

    Only ``tcp://HOST:PORT`` with a port number is probed; any other endpoint (port ``*`` or
    0, ipc, a host name that does not resolve here) is left to ZeroMQ.
    """
    match = _TCP.match(endpoint)
    if match is None or not match["port"].isdigit() or int(match["port"]) == 0:
        return
    host = match["host"].strip("[]")
    host = "" if host == "*" else host
    try:
        infos = socket.getaddrinfo(host or None, int(match["port"]), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):               # an interface name: ZeroMQ resolves those
        return
    family, kind, proto, _name, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"{option} {endpoint}: cannot bind it ({exc.strerror}); is another "
                          "processor, simulator or viewer using it? Give another port") from None
    finally:
        probe.close()
