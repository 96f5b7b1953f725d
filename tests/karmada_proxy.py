"""A local stand-in for the Karmada apiserver's aggregated cluster proxy (test double).

It serves exactly the path shape of the real proxy,

    /apis/cluster.karmada.io/v1alpha1/clusters/<cluster>/proxy/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/<path>

over HTTPS with a self-signed CA, requires the kubeconfig's bearer token (401 with a Kubernetes
`Status` body otherwise), consumes `Authorization` as the apiserver does, and forwards everything
else (including `X-Ray-Authorization`) to the local site the test maps that cluster/service to.
An unknown cluster answers 404; a cluster whose member cannot be dialed answers 503, as the real
proxy does for an unreachable Pull-mode member. It does not emulate Kubernetes RBAC, impersonation,
or the apiserver's own endpoints: with `apiserver=URL` every path outside the proxy shape is forwarded
there unchanged, `Authorization` included (the Kubernetes API test double of `tests/fake_kube.py`
behind the same address and token, as one real apiserver serves both).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

PATH = re.compile(
    r"^/apis/cluster\.karmada\.io/v1alpha1/clusters/(?P<cluster>[^/]+)/proxy"
    r"/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<svc>[^/]+)/proxy(?P<rest>/.*)?$"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "content-length", "content-encoding", "host", "authorization"}

#: (cluster, namespace, "svc:port") -> upstream base URL, or None when the member cannot be dialed
Resolver = Callable[[str, str, str], "str | None"]


@dataclass
class Seen:
    cluster: str
    namespace: str
    service: str
    path: str
    method: str
    status: int
    forwarded_headers: dict[str, str] = field(default_factory=dict)


def _status(code: int, reason: str, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}).encode()


def self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    """A CA-less self-signed certificate for 127.0.0.1: (cert file, key file, cert PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "karmada-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp / "apiserver.crt", tmp / "apiserver.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, pem


class KarmadaProxy:
    """The running proxy: `url`, `token`, `ca_pem`, `seen` (every request), `kubeconfig(path)`."""

    def __init__(self, resolve: Resolver, token: str, tmp: Path, apiserver: str | None = None) -> None:
        self.resolve, self.token, self.seen, self.apiserver = resolve, token, [], apiserver
        cert, key, self.ca_pem = self_signed(tmp)
        self._upstream = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                        pass  # the client went away (a timed-out poll): nothing to answer

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    return self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
                path, _, query = self.path.partition("?")
                m = PATH.match(path)
                if not m and proxy.apiserver:
                    keep = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP - {"authorization"}}
                    r = proxy._upstream.request(self.command, proxy.apiserver + self.path, content=body, headers=keep)
                    return self._answer(r.status_code, r.content,
                                        {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP})
                if not m:
                    return self._answer(404, _status(404, "NotFound", f"the server could not find {path}"))
                cluster, ns, svc = m["cluster"], m["ns"], m["svc"]
                rest = (m["rest"] or "/") + (f"?{query}" if query else "")
                try:
                    upstream = proxy.resolve(cluster, ns, svc)
                except KeyError:
                    return self._answer(404, _status(404, "NotFound",
                                                     f'clusters.cluster.karmada.io "{cluster}" not found'))
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                seen = Seen(cluster, ns, svc, rest, self.command, 0, forwarded)
                proxy.seen.append(seen)
                if upstream is None:
                    seen.status = 503
                    return self._answer(503, _status(503, "ServiceUnavailable", "error trying to reach service: "
                                                     f"dial tcp: cluster {cluster} unreachable"))
                try:
                    r = proxy._upstream.request(self.command, upstream.rstrip("/") + rest, content=body,
                                                headers=forwarded)
                except httpx.HTTPError as e:
                    seen.status = 503
                    return self._answer(503, _status(503, "ServiceUnavailable", f"error trying to reach service: {e}"))
                seen.status = r.status_code
                headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
                self._answer(r.status_code, r.content, headers)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="karmada-proxy", daemon=True)

    def kubeconfig(self, path: Path, *, token: str | None = None, context: str = "karmada-apiserver") -> Path:
        """A kubeconfig for this proxy (bearer token, CA data), as `karmadactl` writes one."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "karmada", "cluster": {
                "server": self.url, "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
            "users": [{"name": "admin", "user": {"token": token if token is not None else self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "karmada", "user": "admin"}}],
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def start(self) -> KarmadaProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._upstream.close()
        self._thread.join(timeout=10)


@contextlib.contextmanager
def karmada_proxy(resolve: Resolver, tmp: Path, token: str = "karmada-test-token",
                  apiserver: str | None = None) -> Iterator[KarmadaProxy]:
    proxy = KarmadaProxy(resolve, token, tmp, apiserver).start()
    try:
        yield proxy
    finally:
        proxy.stop()
