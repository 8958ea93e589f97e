"""CURVE on the bus: the server's keypair, and an allow-list of client keys that the bus
thread itself enforces, answering libzmq's authentication (ZAP) requests.

The allow-list is a folder of public key files, read again on reload: a key added is
admitted at its next connection, and a key removed is refused from then on, for requests
on connections already open too. Every refused connection is logged with the peer and the
reason, at most once a minute per peer, key and reason, with how many were not logged.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog
import zmq
import zmq.auth
from zmq.utils import z85

log = structlog.get_logger()

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq sends a context's authentication requests (RFC 27)."""
_REPEAT_LOG_S = 60.0


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to share) and ``NAME.key_secret`` (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def server_keypair(secret_key: Path) -> tuple[bytes, bytes]:
    """The server's public and secret key from its ``NAME.key_secret`` file; OSError if unusable."""
    try:
        public, secret = zmq.auth.load_certificate(str(secret_key))
    except (OSError, ValueError) as error:
        raise OSError(f"[bus] curve_secret_key = {str(secret_key)!r}: not a readable key file ({error})") from None
    if secret is None:
        raise OSError(f"[bus] curve_secret_key = {str(secret_key)!r} holds no secret key (use NAME.key_secret)")
    return public, secret


def read_allowed_keys(folder: Path) -> frozenset[bytes]:
    """The z85 public keys of the ``*.key`` files in ``folder``; OSError if it cannot be read."""
    if not folder.is_dir():
        raise OSError(f"[bus] curve_allow = {str(folder)!r}: no such folder of client public keys")
    try:
        return frozenset(zmq.auth.load_certificates(str(folder)))
    except (OSError, ValueError) as error:
        raise OSError(f"[bus] curve_allow = {str(folder)!r}: unreadable key files ({error})") from None


class AllowList:
    """The client keys admitted to the bus; owned by the bus thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys = read_allowed_keys(folder)
        self._logged: dict[tuple[str, str, str], tuple[float, int]] = {}

    def reload(self) -> tuple[int, int]:
        """Read the folder again; (keys added, keys removed). OSError leaves the old list."""
        keys = read_allowed_keys(self.folder)
        added, removed = len(keys - self.keys), len(self.keys - keys)
        self.keys = keys
        return added, removed

    def admits(self, user_id: str) -> bool:
        """Whether the client authenticated as ``user_id`` (its z85 key) is still allowed."""
        return user_id.encode() in self.keys

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request (RFC 27): 200 with the client's z85 key as its user
        id, or 400 for a key not in the list."""
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism, *credentials = request
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self.refused(address.decode(errors="replace"), "-", f"mechanism {mechanism.decode(errors='replace')}")
            return [version, request_id, b"400", b"CURVE only", b"", b""]
        key = z85.encode(credentials[0])
        if key not in self.keys:
            self.refused(address.decode(errors="replace"), key.decode(), f"key not in {self.folder}")
            return [version, request_id, b"400", b"key not allowed", b"", b""]
        return [version, request_id, b"200", b"OK", key, b""]

    def refused(self, peer: str, key: str, reason: str) -> None:
        """Log a refused connection or request, once a minute per (peer, key, reason)."""
        now = time.monotonic()
        last, unlogged = self._logged.get((peer, key, reason), (-_REPEAT_LOG_S, 0))
        if now - last < _REPEAT_LOG_S:
            self._logged[(peer, key, reason)] = (last, unlogged + 1)
            return
        self._logged[(peer, key, reason)] = (now, 0)
        log.warning("bus client refused", peer=peer or "(local)", client_key=key, reason=reason,
                    **({"refused_since_last_logged": unlogged} if unlogged else {}))


def curve_client(socket: zmq.Socket, server_public_key: Path, client_secret_key: Path) -> None:
    """Make ``socket`` a CURVE client of the server whose public key file is given."""
    server_public, _ = zmq.auth.load_certificate(str(server_public_key))
    public, secret = zmq.auth.load_certificate(str(client_secret_key))
    if secret is None:
        raise OSError(f"{client_secret_key}: holds no secret key (use NAME.key_secret)")
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret


class CurveGate:
    """CURVE for the bus's sockets, enforced on the bus thread: it answers the context's ZAP
    requests from the allow-list, and logs handshakes that fail before ZAP is asked (a wrong
    server key, a client without CURVE). Create it before binding the sockets it secures."""

    _FAILURES = {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake failed: protocol error (a wrong server key?)",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed (a client without CURVE?)"}

    def __init__(self, context: zmq.Context, secret_key: Path, allow: Path) -> None:
        self._public, self._secret = server_keypair(secret_key)
        self.allow = AllowList(allow)
        self._zap = context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        try:
            self._zap.bind(ZAP_ENDPOINT)  # before any CURVE socket binds: libzmq admits all without it
        except zmq.ZMQError as error:
            self._zap.close()
            raise OSError(f"cannot serve CURVE authentication ({ZAP_ENDPOINT}: {error})") from None
        self._monitors: dict[zmq.Socket, zmq.Socket] = {}

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with this keypair, its handshakes watched."""
        socket.curve_publickey = self._public
        socket.curve_secretkey = self._secret
        socket.curve_server = True
        self._monitors[socket.get_monitor_socket(sum(self._FAILURES))] = socket

    def forget(self, socket: zmq.Socket) -> None:
        """Stop watching ``socket`` (before it is closed)."""
        for monitor, watched in list(self._monitors.items()):
            if watched is socket:
                socket.disable_monitor()
                monitor.close(linger=0)
                del self._monitors[monitor]

    def pollables(self) -> list[zmq.Socket]:
        return [self._zap, *self._monitors]

    def handle(self, ready: zmq.Socket) -> None:
        """Serve whatever ``ready`` (one of ``pollables``) holds."""
        if ready is self._zap:
            while self._zap.poll(0):
                self._zap.send_multipart(self.allow.answer(self._zap.recv_multipart()))
            return
        from zmq.utils.monitor import recv_monitor_message

        while ready.poll(0):
            event = recv_monitor_message(ready)
            reason = self._FAILURES.get(event["event"])
            if reason is not None:
                self.allow.refused(event["endpoint"].decode(errors="replace"), "-", reason)

    def revoked_key(self, frame: zmq.Frame) -> str | None:
        """The key of the client that sent ``frame`` when it is no longer in the allow-list."""
        try:
            key = frame.get("User-Id")
        except zmq.ZMQError:
            return "(none)"  # not authenticated by us: never admitted
        return None if self.allow.admits(key) else key

    def close(self) -> None:
        for socket in list(self._monitors.values()):
            self.forget(socket)
        self._zap.close(linger=0)
