"""Misbehaving servers on loopback, for the download-deadline tests: real
sockets and a real HTTP server whose handlers trickle, stall, drip headers
or send endless bodies, a TCP listener that counts connections (or never
finishes a TLS handshake), and a self-signed certificate made at test time
for real HTTPS."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
import time
from pathlib import Path

BODY = bytes(range(256)) * 40  # 10240 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    """Paths: /good, /trickle, /stall, /drip-headers, /endless, /endless-trickle,
    /redirect?to=URL, and anything under /site/ served from ``server.site``."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *a) -> None:
        pass

    def _drip(self, data: bytes, every: float) -> None:
        stop = self.server.stopping  # type: ignore[attr-defined]
        for i in range(len(data)):
            if stop.wait(every):
                return
            try:
                self.wfile.write(data[i:i + 1])
            except OSError:
                return

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path, _, query = self.path.partition("?")
        self.server.requests.append(path)  # type: ignore[attr-defined]
        if path == "/drip-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Drip: ")
            self._drip(b"a" * 100000, 0.05)
            return
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.end_headers()
            return
        site = getattr(self.server, "site", None)
        trickle = getattr(self.server, "trickle", set())
        if site is not None and path.startswith("/site/"):
            f = Path(site) / path.removeprefix("/site/")
            if not f.is_file():
                self.send_error(404)
                return
            body = f.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if f.name in trickle:
                self._drip(body, 0.05)
            else:
                self.wfile.write(body)
            return
        if path not in ("/good", "/trickle", "/stall", "/endless", "/endless-trickle"):
            self.send_error(404)
            return
        self.send_response(200)
        if not path.startswith("/endless"):
            self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if path == "/good":
            self.wfile.write(BODY)
        elif path == "/trickle":
            self._drip(BODY, 0.05)
        elif path == "/stall":
            self.wfile.write(BODY[:100])
            self.server.stopping.wait(30)  # type: ignore[attr-defined]
        elif path == "/endless":
            try:
                while not self.server.stopping.is_set():  # type: ignore[attr-defined]
                    self.wfile.write(b"x" * 65536)
            except OSError:
                return
        else:
            self._drip(b"x" * 10_000_000, 0.05)


class HttpServer:
    """A real HTTP(S) server in a thread. ``site``: a folder served under
    /site/; ``trickle``: file names under it sent one byte every 50 ms."""

    def __init__(self, site: Path | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stopping = threading.Event()
        self.httpd.requests = []
        self.httpd.site = site
        self.httpd.trickle = set()
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def trickle(self, *names: str) -> None:
        self.httpd.trickle = set(names)

    def close(self) -> None:
        self.httpd.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Listener:
    """A TCP port on loopback that counts the connections made to it. With
    ``tls_drip``, each connection gets a TLS record header announcing 16 KiB
    and then one byte every 50 ms: a handshake that never completes but is
    never silent for long. Otherwise connections are closed at once."""

    def __init__(self, tls_drip: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._drip_tls = tls_drip
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._drip_tls:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()
            else:
                conn.close()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")
                while not self._stop.wait(0.05):
                    conn.sendall(b"\x00")
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        time.sleep(0.3)
        self.sock.close()


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1,
    and the certificate's path (the CA file a client pins)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "server.crt", tmp / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, pem)
    return ctx, crt
