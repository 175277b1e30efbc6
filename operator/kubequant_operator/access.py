"""Cluster access: where the API server is and how to authenticate, without a client library.

Read from the kubeconfig named in settings (``KUBECONFIG``), else from the pod's service
account (in-cluster), else from ``~/.kube/config``. The same :class:`ClusterAccess` feeds the
operator's own aiohttp session and kopf's login, so both always talk to the same server
with the same identity. Supported credentials: bearer token (inline or file), client
certificate and key (file or inline data), basic auth; CA file or inline data;
``insecure-skip-tls-verify``. Exec and auth-provider plugins are not supported.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubequant_api.errors import KubequantError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class AccessError(KubequantError):
    """The cluster's address or credentials cannot be read; the message says where."""


@dataclass(frozen=True)
class ClusterAccess:
    server: str
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None  # re-read on every login (projected tokens rotate)
    username: str | None = None
    password: str | None = None
    cert_path: str | None = None
    cert_data: bytes | None = None
    key_path: str | None = None
    key_data: bytes | None = None
    namespace: str | None = None

    def current_token(self) -> str | None:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise AccessError(f"cannot read the token file {self.token_file}: {exc}") from exc
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        """An SSL context for https servers (False for plain http)."""
        if not self.server.startswith("https://"):
            return False
        ctx = ssl.create_default_context(
            cafile=self.ca_path,
            cadata=self.ca_data.decode() if self.ca_data else None,
        )
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = self.cert_path, self.key_path
        if self.cert_data or self.key_data:
            cert, key = _materialize(self.cert_data, self.key_data, cert, key)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def headers(self) -> dict[str, str]:
        token = self.current_token()
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.username is not None and self.password is not None:
            raw = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        return {}


def _materialize(
    cert_data: bytes | None, key_data: bytes | None, cert: str | None, key: str | None
) -> tuple[str | None, str | None]:
    """ssl needs files for client certificates: write inline data to private temp files."""
    folder = Path(tempfile.mkdtemp(prefix="kubequant-tls-"))
    os.chmod(folder, 0o700)
    if cert_data:
        (folder / "tls.crt").write_bytes(cert_data)
        cert = str(folder / "tls.crt")
    if key_data:
        (folder / "tls.key").write_bytes(key_data)
        os.chmod(folder / "tls.key", 0o600)
        key = str(folder / "tls.key")
    return cert, key


def _b64(value: Any, where: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value))
    except ValueError as exc:
        raise AccessError(f"{where}: not valid base64") from exc


def _relative(base: Path, value: Any) -> str | None:
    if not value:
        return None
    path = Path(str(value))
    return str(path if path.is_absolute() else base.parent / path)


def from_kubeconfig(path: str | Path, context: str | None = None) -> ClusterAccess:
    kc_path = Path(path).expanduser()
    try:
        data = yaml.safe_load(kc_path.read_text()) or {}
    except OSError as exc:
        raise AccessError(f"KUBECONFIG: cannot read {kc_path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise AccessError(f"KUBECONFIG: {kc_path} is not valid YAML: {exc}") from exc
    name = context or data.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in data.get("contexts") or []}
    if name not in contexts:
        raise AccessError(f"KUBECONFIG: {kc_path} has no context {name!r}")
    ctx = contexts[name]
    clusters = {c.get("name"): c.get("cluster") or {} for c in data.get("clusters") or []}
    users = {u.get("name"): u.get("user") or {} for u in data.get("users") or []}
    cluster = clusters.get(ctx.get("cluster"))
    if not cluster or not cluster.get("server"):
        raise AccessError(f"KUBECONFIG: context {name!r} names no cluster with a server")
    user = users.get(ctx.get("user"), {})
    if user.get("exec") or user.get("auth-provider"):
        raise AccessError(
            f"KUBECONFIG: user {ctx.get('user')!r} uses an exec/auth-provider plugin, which the "
            "operator does not support; use a token or a client certificate"
        )
    return ClusterAccess(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=_relative(kc_path, cluster.get("certificate-authority")),
        ca_data=_b64(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=_relative(kc_path, user.get("tokenFile")),
        username=user.get("username"),
        password=user.get("password"),
        cert_path=_relative(kc_path, user.get("client-certificate")),
        cert_data=_b64(user.get("client-certificate-data"), "client-certificate-data"),
        key_path=_relative(kc_path, user.get("client-key")),
        key_data=_b64(user.get("client-key-data"), "client-key-data"),
        namespace=ctx.get("namespace"),
    )


def in_cluster(env: dict[str, str] | None = None, sa_dir: Path = SA_DIR) -> ClusterAccess | None:
    environ = os.environ if env is None else env
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (sa_dir / "token").exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ns_file = sa_dir / "namespace"
    return ClusterAccess(
        server=f"https://{host}:{port}",
        ca_path=str(sa_dir / "ca.crt") if (sa_dir / "ca.crt").exists() else None,
        token_file=str(sa_dir / "token"),
        namespace=ns_file.read_text().strip() if ns_file.exists() else None,
    )


def load_access(kubeconfig: str = "") -> ClusterAccess:
    """The kubeconfig given, else the in-cluster service account, else ~/.kube/config."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    found = in_cluster()
    if found is not None:
        return found
    default = Path("~/.kube/config").expanduser()
    if default.exists():
        return from_kubeconfig(default)
    raise AccessError(
        "no cluster access: set KUBECONFIG, or run in a pod with a service account token"
    )
