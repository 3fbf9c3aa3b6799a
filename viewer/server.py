"""Starting the viser server safely: loopback by default, a checked address otherwise."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import socket
import sys

from recon3d.errors import Recon3dError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class ViewerError(Recon3dError, RuntimeError):
    """The viewer cannot start (an address it may not or cannot bind)."""


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def resolve_host(host: str | None, *, allow_remote: bool) -> str:
    """The address to bind: loopback unless a non-loopback ``host`` was asked for explicitly.

    ``allow_remote`` says the caller's user named the address (``--host``); without it a non-loopback
    address is refused. An address that is not one of this machine's raises a one-line error here, since
    viser would otherwise retry a thousand ports and hang.
    """
    if host is None or host == "":  # "" would mean every interface to the socket layer
        return DEFAULT_HOST
    if not is_loopback(host) and not allow_remote:
        raise ViewerError(
            f"refusing to serve the viewer on {host}, which is reachable from other machines; "
            "pass --host explicitly (allow_remote=True) to do that"
        )
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ViewerError(f"cannot resolve viewer host {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(sockaddr[:2] if family == socket.AF_INET else sockaddr)
        except OSError as exc:
            raise ViewerError(f"cannot bind the viewer to {host}: {exc.strerror}") from None
    return host


def port_is_free(host: str, port: int) -> bool:
    """True when ``port`` can be bound on ``host`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_viser(host: str | None, port: int, *, allow_remote: bool, label: str | None = None):
    """Start a viser server bound as ``resolve_host`` decides; returns (server, url)."""
    import viser

    bind = resolve_host(host, allow_remote=allow_remote)
    if port < 0 or port > 65535:
        raise ViewerError(f"port must be within 0-65535, got {port}")
    if port != 0 and not port_is_free(bind, port):
        print(f"recon3d viewer: port {port} is in use; taking the next free one", file=sys.stderr)
    # viser prints its own URL box; recon3d prints one line with the URL instead
    with contextlib.redirect_stdout(io.StringIO()):
        server = viser.ViserServer(host=bind, port=port, label=label, verbose=False)
    actual = server.get_port()
    shown = "localhost" if bind in ("0.0.0.0", "::") else bind
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{actual}"
    if not is_loopback(bind):
        print(
            f"recon3d viewer: WARNING: listening on {bind}, reachable from other machines; anyone who can reach "
            "it can see the scene and start renders",
            file=sys.stderr,
        )
    return server, url
