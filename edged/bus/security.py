"""CURVE on the bus: the server's keypair, and only allow-listed client keys get in (ZAP)."""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to share) and ``NAME.key_secret`` (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def curve_server(context: zmq.Context, sockets: list[zmq.Socket], secret_key: Path, allow: Path) -> ThreadAuthenticator:
    """Make ``sockets`` CURVE servers with this keypair, admitting only keys in ``allow``."""
    if not allow.is_dir():
        raise OSError(f"[bus] curve_allow = {str(allow)!r}: no such folder of client public keys")
    public, secret = zmq.auth.load_certificate(str(secret_key))
    if secret is None:
        raise OSError(f"[bus] curve_secret_key = {str(secret_key)!r} holds no secret key (use NAME.key_secret)")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(allow))
    for socket in sockets:
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_server = True
    return authenticator


def curve_client(socket: zmq.Socket, server_public_key: Path, client_secret_key: Path) -> None:
    """Make ``socket`` a CURVE client of the server whose public key file is given."""
    server_public, _ = zmq.auth.load_certificate(str(server_public_key))
    public, secret = zmq.auth.load_certificate(str(client_secret_key))
    if secret is None:
        raise OSError(f"{client_secret_key}: holds no secret key (use NAME.key_secret)")
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret
