"""Kubeconfig credential plugins, run the way client-go runs them: ``exec`` plugins
(client.authentication.k8s.io ``ExecCredential``: EKS ``aws eks get-token``, GKE
``gke-gcloud-auth-plugin``, ``kubelogin``) and the legacy ``auth-provider`` entries ``oidc``
and ``gcp``. Each plugin caches what it got until its expiry and runs again after; the calls
block (a subprocess or an HTTP exchange), so async code calls them through
:func:`asyncio.to_thread` (:meth:`kubequant_operator.access.ClusterAccess.refresh`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubequant_api.errors import KubequantError

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_INFO_ENV = "KUBERNETES_EXEC_INFO"
EXEC_CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
# A credential is renewed this long before it expires (oauth2's expiryDelta), so that no
# request leaves with a token that expires on the way.
EXPIRY_MARGIN = timedelta(seconds=10)
PLUGIN_TIMEOUT_SECONDS = 120.0
STDERR_CLIP = 2000
INSTALL_HINT_HELP = (
    "It looks like you are trying to use a client-go credential plugin that is not installed."
)


class AccessError(KubequantError):
    """The cluster's address or credentials cannot be read; the message says where."""


@dataclass(frozen=True)
class Credential:
    """What a plugin returned: a bearer token and/or a client certificate (PEM)."""

    token: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    expiry: datetime | None = None  # None: valid until the server refuses it

    def fresh(self, now: datetime | None = None) -> bool:
        if self.expiry is None:
            return True
        return (now or datetime.now(UTC)) < self.expiry - EXPIRY_MARGIN


class CredentialPlugin:
    """A credential source that caches its result until shortly before it expires."""

    def __init__(self, user: str) -> None:
        self.user = user
        self._lock = threading.Lock()
        self._cached: Credential | None = None

    def cached(self) -> Credential | None:
        """The cached credential while it is fresh, else None (nothing is run)."""
        found = self._cached
        return found if found is not None and found.fresh() else None

    def credential(self) -> Credential:
        """The cached credential, or a new one (blocking: runs the plugin once at a time)."""
        with self._lock:
            found = self.cached()
            if found is None:
                found = self._cached = self._obtain()
            return found

    def renew(self) -> Credential:
        """A new credential even while the cached one is fresh (a login after a 401 runs the
        plugin again, as client-go does); the cached one when no new one can be made."""
        with self._lock:
            try:
                self._cached = self._obtain()
            except AccessError:
                found = self.cached()
                if found is None:
                    raise
                return found
            return self._cached

    def _obtain(self) -> Credential:
        raise NotImplementedError

    def _error(self, message: str) -> AccessError:
        return AccessError(f"KUBECONFIG user {self.user!r}: getting credentials: {message}")


def parse_time(value: Any, where: str) -> datetime:
    """An RFC 3339 timestamp (``Z`` or an offset; nanoseconds cut to microseconds)."""
    text = str(value).strip()
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise AccessError(f"{where}: not an RFC 3339 time: {text!r}") from exc
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _clip(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    return text if len(text) <= STDERR_CLIP else text[:STDERR_CLIP] + " ...(clipped)"


# --------------------------------------------------------------------------- exec
class ExecPlugin(CredentialPlugin):
    """A ``users[].user.exec`` credential plugin (ExecCredential v1 / v1beta1)."""

    def __init__(
        self, user: str, spec: Mapping[str, Any], cluster: Mapping[str, Any], origin: Path
    ) -> None:
        super().__init__(user)
        where = f"KUBECONFIG user {user!r}"
        problems = []
        if not spec.get("command"):
            problems.append(
                f"command must be specified for {user} to use exec authentication plugin"
            )
        api_version = str(spec.get("apiVersion") or "")
        if not api_version:
            problems.append(
                f"apiVersion must be specified for {user} to use exec authentication plugin"
            )
        elif api_version not in EXEC_API_VERSIONS:
            problems.append(f"exec plugin: invalid apiVersion {api_version!r}")
        mode = spec.get("interactiveMode") or (
            "IfAvailable" if api_version.endswith("/v1beta1") else ""
        )
        if not mode:
            problems.append(
                f"interactiveMode must be specified for {user} to use exec authentication plugin"
            )
        elif mode not in INTERACTIVE_MODES:
            problems.append(f"invalid interactiveMode for {user}: {mode!r}")
        elif mode == "Always":
            problems.append(
                "exec plugin cannot support interactive mode: standard input is not a terminal"
            )
        env = {}
        for item in spec.get("env") or []:
            if not (item or {}).get("name"):
                problems.append(
                    f"env variable name must be specified for {user} to use exec authentication "
                    "plugin"
                )
                continue
            env[str(item["name"])] = str(item.get("value") or "")
        if problems:
            raise AccessError(f"{where}: " + "; ".join(problems))
        command = str(spec["command"])
        # client-go resolves the command against the kubeconfig only when it names a path.
        if os.sep in command and not os.path.isabs(command):
            command = str(origin.parent / command)
        self.command = command
        self.args = [str(a) for a in spec.get("args") or []]
        self.env = env
        self.api_version = api_version
        self.install_hint = str(spec.get("installHint") or "")
        self.cluster = dict(cluster) if spec.get("provideClusterInfo") else None

    def exec_info(self) -> str:
        """The KUBERNETES_EXEC_INFO the plugin reads (never interactive: an operator has no
        terminal)."""
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        return json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})

    def _obtain(self) -> Credential:
        env = {**os.environ, **self.env, EXEC_INFO_ENV: self.exec_info()}
        try:
            proc = subprocess.run(
                [self.command, *self.args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PLUGIN_TIMEOUT_SECONDS,
                check=False,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            hint = f"\n\n{self.install_hint}" if self.install_hint else ""
            raise self._error(
                f"exec: executable {self.command} not found ({exc.strerror}). "
                f"{INSTALL_HINT_HELP}{hint}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise self._error(
                f"exec: executable {self.command} did not finish in {PLUGIN_TIMEOUT_SECONDS:g}s"
            ) from exc
        except OSError as exc:
            raise self._error(f"exec: {exc}") from exc
        if proc.returncode != 0:
            stderr = _clip(proc.stderr)
            raise self._error(
                f"exec: executable {self.command} failed with exit code {proc.returncode}"
                + (f": {stderr}" if stderr else "")
            )
        return self._parse(proc.stdout)

    def _parse(self, stdout: bytes) -> Credential:
        try:
            data = json.loads(stdout)
        except ValueError as exc:
            raise self._error(f"decoding stdout: {exc}") from exc
        if not isinstance(data, dict):
            raise self._error("decoding stdout: not a JSON object")
        returned = data.get("apiVersion")
        if returned != self.api_version:
            raise self._error(
                f"exec plugin is configured to use API version {self.api_version}, plugin "
                f"returned version {returned}"
            )
        status = data.get("status")
        if not isinstance(status, dict):
            raise self._error("exec plugin didn't return a status field")
        token = status.get("token") or None
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if not token and not cert and not key:
            raise self._error("exec plugin didn't return a token or cert/key pair")
        if bool(cert) != bool(key):
            raise self._error("exec plugin returned only certificate or key, not both")
        stamp = status.get("expirationTimestamp")
        return Credential(
            token=str(token) if token else None,
            cert_data=str(cert).encode() if cert else None,
            key_data=str(key).encode() if key else None,
            expiry=parse_time(stamp, "status.expirationTimestamp") if stamp else None,
        )


def exec_cluster(cluster: Mapping[str, Any], ca_file: str | None) -> dict[str, Any]:
    """The cluster as an exec plugin sees it with ``provideClusterInfo`` (ExecCredential
    ``spec.cluster``: the CA as base64 data, the exec extension as ``config``)."""
    ca = cluster.get("certificate-authority-data")
    if not ca and ca_file:
        try:
            ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
        except OSError as exc:
            raise AccessError(f"KUBECONFIG: cannot read {ca_file}: {exc}") from exc
    info: dict[str, Any] = {"server": cluster.get("server")}
    for key, value in (
        ("tls-server-name", cluster.get("tls-server-name")),
        ("insecure-skip-tls-verify", cluster.get("insecure-skip-tls-verify")),
        ("certificate-authority-data", ca),
        ("proxy-url", cluster.get("proxy-url")),
        ("disable-compression", cluster.get("disable-compression")),
    ):
        if value:
            info[key] = value
    for ext in cluster.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == EXEC_CLUSTER_EXTENSION:
            info["config"] = ext.get("extension")
    return info


# --------------------------------------------------------------------------- auth-provider
def json_path(data: Any, path: str) -> Any:
    """The value at a kubectl-style JSONPath of plain fields: ``{.credential.access_token}``."""
    expr = path.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    node = data
    for part in [p for p in re.split(r"\.|\['([^']*)'\]", expr) if p]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class GcpProvider(CredentialPlugin):
    """The legacy ``gcp`` auth-provider: ``access-token`` while ``expiry`` is ahead, else
    ``cmd-path`` (e.g. ``gcloud config config-helper --format=json``)."""

    def __init__(self, user: str, config: Mapping[str, Any]) -> None:
        super().__init__(user)
        self.config = {str(k): str(v) for k, v in config.items() if v is not None}
        token, expiry = self.config.get("access-token"), self.config.get("expiry")
        if token:
            when = parse_time(expiry, "auth-provider gcp expiry") if expiry else None
            self._cached = Credential(token=token, expiry=when)
        cmd_path = self.config.get("cmd-path", "")
        args = self.config.get("cmd-args", "").split()
        if cmd_path and not args and " " in cmd_path.strip():
            cmd_path, *args = cmd_path.split()
        self.command = [cmd_path, *args] if cmd_path else []

    def _obtain(self) -> Credential:
        if not self.command:
            raise self._error(
                "the gcp auth-provider has no usable access-token and no cmd-path (Google "
                "application default credentials are not read here); use the "
                "gke-gcloud-auth-plugin exec plugin (gcloud components install "
                "gke-gcloud-auth-plugin, then gcloud container clusters get-credentials)"
            )
        try:
            proc = subprocess.run(
                self.command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=PLUGIN_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._error(f"gcp cmd-path {self.command[0]}: {exc}") from exc
        if proc.returncode != 0:
            raise self._error(
                f"gcp cmd-path {self.command[0]} failed with exit code {proc.returncode}: "
                f"{_clip(proc.stderr)}"
            )
        try:
            data = json.loads(proc.stdout)
        except ValueError as exc:
            raise self._error(f"gcp cmd-path {self.command[0]}: output is not JSON: {exc}") from exc
        token_key = self.config.get("token-key") or "{.access_token}"
        expiry_key = self.config.get("expiry-key") or "{.token_expiry}"
        token = json_path(data, token_key)
        if not token:
            raise self._error(f"gcp cmd-path {self.command[0]}: no token at {token_key}")
        expiry = json_path(data, expiry_key)
        return Credential(
            token=str(token), expiry=parse_time(expiry, f"gcp {expiry_key}") if expiry else None
        )


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT (unverified: the API server verifies it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return datetime.fromtimestamp(float(exp), UTC) if isinstance(exp, int | float) else None


class OidcProvider(CredentialPlugin):
    """The legacy ``oidc`` auth-provider: ``id-token`` until its ``exp``; then, with a
    ``refresh-token`` and ``idp-issuer-url``, a refresh-token grant at the issuer's token
    endpoint (found through its OpenID discovery document)."""

    def __init__(self, user: str, config: Mapping[str, Any], origin: Path) -> None:
        super().__init__(user)
        self.config = {str(k): str(v) for k, v in config.items() if v is not None}
        self.origin = origin
        for required in ("client-id", "idp-issuer-url"):
            if not self.config.get(required):
                raise AccessError(
                    f"KUBECONFIG user {user!r}: oidc auth-provider: must provide {required}"
                )
        id_token = self.config.get("id-token")
        if id_token:
            self._cached = Credential(token=id_token, expiry=jwt_expiry(id_token))

    def _obtain(self) -> Credential:
        refresh = self.config.get("refresh-token")
        if not refresh:
            raise self._error(
                "the oidc id-token is missing or expired and no refresh-token is set to renew "
                "it; log in again (e.g. kubectl oidc-login) or use an exec plugin such as "
                "kubelogin"
            )
        issuer = self.config["idp-issuer-url"].rstrip("/")
        ctx = self._ssl()
        discovery = self._fetch(f"{issuer}/.well-known/openid-configuration", ctx)
        endpoint = discovery.get("token_endpoint")
        if not endpoint:
            raise self._error(f"oidc: the issuer {issuer} names no token_endpoint")
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        client_id, secret = self.config["client-id"], self.config.get("client-secret", "")
        if secret:
            pair = f"{urllib.parse.quote(client_id)}:{urllib.parse.quote(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = client_id
        answer = self._fetch(str(endpoint), ctx, form, headers)
        id_token = answer.get("id_token")
        if not id_token:
            raise self._error("oidc: token response did not contain an id_token")
        if answer.get("refresh_token"):
            self.config["refresh-token"] = str(answer["refresh_token"])
        return Credential(token=str(id_token), expiry=jwt_expiry(str(id_token)))

    def _ssl(self) -> ssl.SSLContext:
        path, data = self.config.get("idp-certificate-authority"), self.config.get(
            "idp-certificate-authority-data"
        )
        if path and not os.path.isabs(path):
            path = str(self.origin.parent / path)
        cadata = base64.b64decode(data).decode() if data else None
        return ssl.create_default_context(cafile=path or None, cadata=cadata)

    def _fetch(
        self,
        url: str,
        ctx: ssl.SSLContext,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """GET (or POST ``form`` to) an http(s) URL of the issuer; its JSON object."""
        if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
            raise self._error(f"oidc: {url}: not an http(s) URL")
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310 - the scheme is checked above
                request, timeout=PLUGIN_TIMEOUT_SECONDS, context=ctx
            ) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise self._error(f"oidc: {url}: HTTP {exc.code}: {_clip(exc.read())}") from exc
        except (OSError, ValueError) as exc:
            raise self._error(f"oidc: {url}: {exc}") from exc
        if not isinstance(answer, dict):
            raise self._error(f"oidc: {url}: not a JSON object")
        return answer


def auth_provider(user: str, spec: Mapping[str, Any], origin: Path) -> CredentialPlugin:
    """The plugin for a ``users[].user.auth-provider`` entry."""
    name = str(spec.get("name") or "")
    config = spec.get("config") or {}
    if name == "oidc":
        return OidcProvider(user, config, origin)
    if name == "gcp":
        return GcpProvider(user, config)
    if name == "azure":
        raise AccessError(
            f"KUBECONFIG user {user!r}: The azure auth plugin has been removed. Please use the "
            "https://github.com/Azure/kubelogin kubectl/client-go credential plugin instead "
            "(kubelogin convert-kubeconfig -l azurecli writes the exec entry)."
        )
    raise AccessError(f"KUBECONFIG user {user!r}: no Auth Provider found for name {name!r}")
