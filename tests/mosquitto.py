"""A real Mosquitto broker for the tests (Debian's ``mosquitto``): a private port with a password
file, and a TLS listener whose CA, server and client certificates openssl makes here."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from conftest import free_port

USER, PASSWORD = "edged", "s3cret-for-tests"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edged test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *(("-extfile", "san.ext") if name == "server" else ()))
    return {name: folder / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class Broker:
    """``mosquitto`` on private ports: ``port`` with a password, ``tls_port`` with TLS (and the
    same password). ``stop`` and ``start`` again keep the ports, as a restarted broker would."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("the tests need Debian's mosquitto (deploy/dev-setup.sh installs it)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.tls_port = free_port(), free_port()
        self.certificates = make_certificates(folder / "tls")
        passwords = folder / "passwords"
        passwords.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD], check=True, capture_output=True)
        passwords.chmod(0o600)
        self.password_file = folder / "edged.password"
        self.password_file.write_text(PASSWORD + "\n")
        certs = self.certificates
        (folder / "mosquitto.conf").write_text(f"""\
per_listener_settings false
allow_anonymous false
password_file {passwords}
persistence false
log_dest stdout
log_type error
log_type warning
log_type notice
user root
listener {self.port} 127.0.0.1
listener {self.tls_port} 127.0.0.1
cafile {certs['ca.crt']}
certfile {certs['server.crt']}
keyfile {certs['server.key']}
""")
        self.process: subprocess.Popen | None = None
        self.log_path = folder / "mosquitto.log"

    def start(self) -> Broker:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.folder / "mosquitto.conf")],
                                        stdout=self.log_path.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, self.log_path.read_text()
                assert time.monotonic() < deadline, "mosquitto did not start listening"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Watcher:
    """A client nobody here wrote (paho) subscribed to a broker, keeping every message."""

    broker: Broker
    topics: list[str]
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    messages: list[paho.MQTTMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=self.protocol)
        self.client.username_pw_set(USER, PASSWORD)
        self.client.on_message = self._keep
        self.client.on_connect = lambda client, *_: ([client.subscribe(t, qos=1) for t in self.topics], self.connected.set())
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        assert self.connected.wait(10), "the test's own client could not connect"
        time.sleep(0.2)  # the subscriptions are in place

    def _keep(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def latest(self, topic: str) -> paho.MQTTMessage | None:
        with self._lock:
            return next((m for m in reversed(self.messages) if m.topic == topic), None)

    def wait_for(self, predicate: Callable[[paho.MQTTMessage], bool], timeout: float = 30, what: str = "a message") -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((m for m in self.messages if predicate(m)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        with self._lock:
            seen = sorted({m.topic for m in self.messages})
        raise AssertionError(f"no {what} within {timeout} s; topics seen: {seen}")

    def json(self, topic: str) -> dict:
        message = self.latest(topic)
        assert message is not None, f"nothing on {topic}"
        return json.loads(message.payload)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
