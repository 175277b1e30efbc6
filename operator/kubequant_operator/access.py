"""Cluster access: where the API server is and how to authenticate, without a client library.

Read from the kubeconfig named in settings (``KUBECONFIG``), else from the pod's service
account (in-cluster), else from ``~/.kube/config``. The same :class:`ClusterAccess` feeds the
operator's own aiohttp session and kopf's login, so both always talk to the same server
with the same identity.

The kubeconfig is read as kubectl reads it (client-go's loading rules): ``KUBECONFIG`` may
list several files (``os.pathsep``), merged so that the first file to set a value wins
(``current-context``, and each named cluster, user and context as a whole); missing files are
skipped; relative paths are resolved against the file that named them. Credentials: bearer
token (inline or ``tokenFile``, re-read on every use), client certificate and key (file or
inline data), basic auth, ``exec`` plugins and the ``oidc``/``gcp`` auth-providers
(:mod:`kubequant_operator.kubeauth`, renewed before they expire); CA file or inline data;
``insecure-skip-tls-verify``; impersonation (``as``, ``as-groups``, ``as-uid``,
``as-user-extra``) sent as ``Impersonate-*`` headers on every request.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kubequant_operator.kubeauth import (
    EXPIRY_MARGIN,
    AccessError,
    Credential,
    CredentialPlugin,
    ExecPlugin,
    auth_provider,
    exec_cluster,
)

__all__ = ["AccessError", "ClusterAccess", "from_kubeconfig", "in_cluster", "load_access"]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
# Characters allowed in an HTTP header name (RFC 7230 tchar) besides letters and digits;
# others in an Impersonate-Extra key are percent-encoded, as client-go does.
_TCHAR = "!#$&'*+-.^_`|~"


@dataclass(frozen=True)
class ClusterAccess:
    server: str
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None  # re-read on every use (projected tokens rotate)
    username: str | None = None
    password: str | None = None
    cert_path: str | None = None
    cert_data: bytes | None = None
    key_path: str | None = None
    key_data: bytes | None = None
    namespace: str | None = None
    # An exec plugin or auth-provider: its token/certificate replace the static ones.
    plugin: CredentialPlugin | None = field(default=None, compare=False, repr=False)
    impersonate_user: str | None = None
    impersonate_uid: str | None = None
    impersonate_groups: tuple[str, ...] = ()
    impersonate_extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def credential(self) -> Credential | None:
        """The plugin's credential (blocking: may run the plugin); None without a plugin."""
        return self.plugin.credential() if self.plugin is not None else None

    async def refresh(self, renew: bool = False) -> Credential | None:
        """The plugin's credential, renewed off the event loop when it is stale (or always,
        with ``renew``: kopf logs in again after a 401)."""
        if self.plugin is None:
            return None
        if renew:
            return await asyncio.to_thread(self.plugin.renew)
        found = self.plugin.cached()
        if found is not None:
            return found
        return await asyncio.to_thread(self.plugin.credential)

    def expiration(self) -> datetime | None:
        """When the current credential must be renewed (None: it does not expire)."""
        found = self.plugin.cached() if self.plugin is not None else None
        if found is None or found.expiry is None:
            return None
        return found.expiry - EXPIRY_MARGIN

    def current_token(self) -> str | None:
        if self.plugin is not None:
            return self.plugin.credential().token
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise AccessError(f"cannot read the token file {self.token_file}: {exc}") from exc
        return self.token

    def client_certificate(self) -> tuple[str | None, bytes | None, str | None, bytes | None]:
        """(cert path, cert data, key path, key data): the plugin's pair when it gave one."""
        found = self.credential()
        if found is not None and found.cert_data and found.key_data:
            return None, found.cert_data, None, found.key_data
        return self.cert_path, self.cert_data, self.key_path, self.key_data

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
        cert, cert_data, key, key_data = self.client_certificate()
        if cert_data or key_data:
            cert, key = _materialize(cert_data, key_data, cert, key)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx

    def impersonation_headers(self) -> list[tuple[str, str]]:
        """``Impersonate-*`` headers (Impersonate-Group and each extra value repeated)."""
        if not self.impersonate_user:
            return []
        out = [("Impersonate-User", self.impersonate_user)]
        if self.impersonate_uid:
            out.append(("Impersonate-Uid", self.impersonate_uid))
        out += [("Impersonate-Group", group) for group in self.impersonate_groups]
        for key, values in self.impersonate_extra:
            name = "Impersonate-Extra-" + urllib.parse.quote(key, safe=_TCHAR)
            out += [(name, value) for value in values]
        return out

    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header (blocking: may run a plugin; see :meth:`refresh`)."""
        token = self.current_token()
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.username is not None and self.password is not None:
            raw = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        return {}

    def headers(self) -> list[tuple[str, str]]:
        """Every header a request carries for this identity (names may repeat)."""
        return [*self.auth_headers().items(), *self.impersonation_headers()]


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
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base.parent / path)


@dataclass
class _Merged:
    """Kubeconfig files merged by client-go's rules; each entry keeps the file it came from."""

    files: list[Path]
    current_context: str | None = None
    clusters: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    users: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    contexts: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)

    def describe(self) -> str:
        return os.pathsep.join(str(f) for f in self.files)


def kubeconfig_paths(value: str | Path) -> list[Path]:
    """The files a ``KUBECONFIG`` value names (``os.pathsep``-separated; empty parts and
    repeats dropped, as client-go does)."""
    out: list[Path] = []
    for part in str(value).split(os.pathsep):
        if part.strip():
            path = Path(part.strip()).expanduser()
            if path not in out:
                out.append(path)
    return out


def _named(items: Any, key: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (str(item.get("name")), item.get(key) or {})
        for item in items or []
        if isinstance(item, dict) and item.get("name")
    ]


def load_kubeconfig(value: str | Path) -> _Merged:
    """Read and merge the kubeconfig files: the first to set a value wins."""
    merged = _Merged(files=kubeconfig_paths(value))
    found = 0
    for path in merged.files:
        if not path.exists():
            continue  # client-go skips missing files of the KUBECONFIG list
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise AccessError(f"KUBECONFIG: cannot read {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise AccessError(f"KUBECONFIG: {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise AccessError(f"KUBECONFIG: {path} is not a kubeconfig (not a mapping)")
        found += 1
        if merged.current_context is None and data.get("current-context"):
            merged.current_context = str(data["current-context"])
        for table, key, items in (
            (merged.clusters, "cluster", data.get("clusters")),
            (merged.users, "user", data.get("users")),
            (merged.contexts, "context", data.get("contexts")),
        ):
            for name, entry in _named(items, key):
                table.setdefault(name, (entry, path))
    if not found:
        raise AccessError(f"KUBECONFIG: cannot read {merged.describe()}: no such file")
    return merged


def _impersonation(user: dict[str, Any]) -> dict[str, Any]:
    extra = user.get("as-user-extra") or {}
    return {
        "impersonate_user": user.get("as") or None,
        "impersonate_uid": user.get("as-uid") or None,
        "impersonate_groups": tuple(str(g) for g in user.get("as-groups") or []),
        "impersonate_extra": tuple(
            (str(k), tuple(str(v) for v in (vs if isinstance(vs, list) else [vs])))
            for k, vs in sorted(extra.items())
        ),
    }


def from_kubeconfig(path: str | Path, context: str | None = None) -> ClusterAccess:
    """The access of ``context`` (default: the current one) in the kubeconfig file(s)."""
    merged = load_kubeconfig(path)
    where = merged.describe()
    name = context or merged.current_context
    if not name:
        raise AccessError(f"KUBECONFIG: {where} sets no current-context")
    if name not in merged.contexts:
        raise AccessError(f"KUBECONFIG: {where} has no context {name!r}")
    ctx, _ = merged.contexts[name]
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    cluster, c_origin = merged.clusters.get(cluster_name, ({}, merged.files[0]))
    if not cluster.get("server"):
        raise AccessError(f"KUBECONFIG: context {name!r} names no cluster with a server")
    user, u_origin = merged.users.get(user_name, ({}, merged.files[0]))
    plugin: CredentialPlugin | None = None
    if user.get("exec"):
        info: dict[str, Any] = {}
        if user["exec"].get("provideClusterInfo"):
            ca_file = _relative(c_origin, cluster.get("certificate-authority"))
            info = exec_cluster(cluster, ca_file)
        plugin = ExecPlugin(user_name, user["exec"], info, u_origin)
    elif user.get("auth-provider"):
        plugin = auth_provider(user_name, user["auth-provider"], u_origin)
    return ClusterAccess(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=_relative(c_origin, cluster.get("certificate-authority")),
        ca_data=_b64(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=_relative(u_origin, user.get("tokenFile")),
        username=user.get("username"),
        password=user.get("password"),
        cert_path=_relative(u_origin, user.get("client-certificate")),
        cert_data=_b64(user.get("client-certificate-data"), "client-certificate-data"),
        key_path=_relative(u_origin, user.get("client-key")),
        key_data=_b64(user.get("client-key-data"), "client-key-data"),
        namespace=ctx.get("namespace"),
        plugin=plugin,
        **_impersonation(user),
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
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    if default.exists():
        return from_kubeconfig(default)
    raise AccessError(
        "no cluster access: set KUBECONFIG, or run in a pod with a service account token"
    )
