"""Cluster access from a kubeconfig or a service account, without a client library: kubectl's
merge rules for a KUBECONFIG list, exec plugins and auth-providers run for real (small
scripts written here), and impersonation headers answered by the local control plane."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kopf
import pytest
import yaml

from kubequant_operator.access import AccessError, from_kubeconfig, in_cluster, load_access
from kubequant_operator.handlers import connection_info, login_context

EXEC_V1 = "client.authentication.k8s.io/v1"


def _config(
    user: dict[str, object], cluster: dict[str, object], namespace: str = "ns1"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [
            {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}
        ],
        "current-context": "x",
    }


def _write(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(_config(user, cluster)))
    return path


def _stamp(delta: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script: the real plugin a kubeconfig names."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}")
    path.chmod(0o755)
    return path


# The exec plugin of these tests: counts its runs in COUNT_FILE, records what it got, and
# prints an ExecCredential whose token expires EXPIRES_IN seconds from now (read from a file,
# so a test can change it between runs).
PLUGIN = """
count_file = os.environ["COUNT_FILE"]
n = int(open(count_file).read()) + 1 if os.path.exists(count_file) else 1
open(count_file, "w").write(str(n))
open(count_file + ".seen", "w").write(json.dumps(
    {"info": json.loads(os.environ["KUBERNETES_EXEC_INFO"]), "args": sys.argv[1:]}))
expires = float(open(os.environ["EXPIRES_FILE"]).read())
stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": f"exec-token-{n}", "expirationTimestamp": stamp}}))
"""


def _exec_user(tmp_path: Path, expires_in: float, **extra: object) -> dict[str, object]:
    plugin = _script(tmp_path, "plugin.py", PLUGIN)
    (tmp_path / "expires").write_text(str(expires_in))
    spec: dict[str, object] = {
        "apiVersion": EXEC_V1,
        "command": str(plugin),
        "args": ["get-token", "--cluster", "demo"],
        "env": [
            {"name": "COUNT_FILE", "value": str(tmp_path / "count")},
            {"name": "EXPIRES_FILE", "value": str(tmp_path / "expires")},
        ],
        "interactiveMode": "Never",
        **extra,
    }
    return {"exec": spec}


def _runs(tmp_path: Path) -> int:
    path = tmp_path / "count"
    return int(path.read_text()) if path.exists() else 0


# --------------------------------------------------------------------------- static


def test_token_and_ca_data(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()
    path = _write(
        tmp_path, {"token": "abc"}, {"server": "https://k:6443/", "certificate-authority-data": ca}
    )
    access = from_kubeconfig(path)
    assert access.server == "https://k:6443"
    assert access.ca_data == b"-----BEGIN CERTIFICATE-----"
    assert access.headers() == [("Authorization", "Bearer abc")]
    assert access.namespace == "ns1"
    info = connection_info(access)
    assert info.server == "https://k:6443"
    assert info.token == "abc" and info.scheme == "Bearer"
    assert info.expiration is None


def test_relative_files_and_plain_http(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = _write(
        tmp_path,
        {"tokenFile": "token", "client-certificate": "c.crt", "client-key": "c.key"},
        {"server": "http://127.0.0.1:1234", "certificate-authority": "ca.crt"},
    )
    access = from_kubeconfig(path)
    assert access.ca_path == str(tmp_path / "ca.crt")
    assert access.cert_path == str(tmp_path / "c.crt")
    assert access.headers() == [("Authorization", "Bearer from-file")]
    assert access.ssl_context() is False  # http: no TLS


def test_basic_auth(tmp_path: Path) -> None:
    path = _write(tmp_path, {"username": "a", "password": "b"}, {"server": "http://h"})
    expected = "Basic " + base64.b64encode(b"a:b").decode()
    assert from_kubeconfig(path).headers() == [("Authorization", expected)]


@pytest.mark.parametrize(
    ("user", "cluster", "needle"),
    [
        ({}, {}, "no cluster with a server"),
        (
            {"exec": {"apiVersion": EXEC_V1, "command": "aws"}},
            {"server": "https://h"},
            "interactiveMode must be specified for u to use exec authentication plugin",
        ),
        (
            {"exec": {"apiVersion": "client.authentication.k8s.io/v9", "command": "aws"}},
            {"server": "https://h"},
            "exec plugin: invalid apiVersion",
        ),
        (
            {"auth-provider": {"name": "azure", "config": {}}},
            {"server": "https://h"},
            "Azure/kubelogin",
        ),
        (
            {"auth-provider": {"name": "keystone"}},
            {"server": "https://h"},
            "no Auth Provider found for name 'keystone'",
        ),
    ],
)
def test_unsupported_or_broken(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object], needle: str
) -> None:
    with pytest.raises(AccessError, match=needle):
        from_kubeconfig(_write(tmp_path, user, cluster))


def test_missing_file_names_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(AccessError, match="KUBECONFIG"):
        load_access(str(tmp_path / "nope"))


def test_in_cluster(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("kubequant-system")
    (tmp_path / "ca.crt").write_text("x")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = in_cluster(env, tmp_path)
    assert access is not None
    assert access.server == "https://10.0.0.1:443"
    assert access.namespace == "kubequant-system"
    assert access.headers() == [("Authorization", "Bearer sa-token")]
    assert in_cluster({}, tmp_path) is None


# --------------------------------------------------------------------------- merging


def test_kubeconfig_list_merges_first_wins_and_paths_resolve_per_file(tmp_path: Path) -> None:
    """client-go's loading rules: missing files skipped; the first file to set
    current-context wins; each named cluster/user/context is taken whole from the first file
    that defines it; relative paths resolve against the file that named them."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "token").write_text("token-of-one")
    (two / "token").write_text("token-of-two")
    (one / "config").write_text(yaml.safe_dump({
        "current-context": "ctx-a",
        "clusters": [{"name": "c", "cluster": {"server": "https://one:6443",
                                               "certificate-authority": "ca.crt"}}],
        "users": [{"name": "alice", "user": {"tokenFile": "token"}}],
    }))  # fmt: skip
    (two / "config").write_text(yaml.safe_dump({
        "current-context": "ctx-b",
        "clusters": [{"name": "c", "cluster": {"server": "https://two:6443"}},
                     {"name": "c2", "cluster": {"server": "https://c2:6443"}}],
        "users": [{"name": "alice", "user": {"token": "not-this-one"}},
                  {"name": "bob", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "ctx-a", "context": {"cluster": "c", "user": "alice",
                                                   "namespace": "team-a"}},
                     {"name": "ctx-b", "context": {"cluster": "c2", "user": "bob"}}],
    }))  # fmt: skip
    listed = os.pathsep.join(
        [str(tmp_path / "missing"), str(one / "config"), "", str(two / "config")]
    )
    access = load_access(listed)
    assert access.server == "https://one:6443"  # cluster c: file one's, whole
    assert access.ca_path == str(one / "ca.crt")
    assert access.token_file == str(one / "token")
    assert access.headers() == [("Authorization", "Bearer token-of-one")]
    assert access.namespace == "team-a"  # the context came from file two
    other = from_kubeconfig(listed, context="ctx-b")
    assert other.server == "https://c2:6443"
    assert other.headers() == [("Authorization", "Bearer token-of-two")]  # two/token
    # The other order: file two's current-context and entries win.
    swapped = load_access(os.pathsep.join([str(two / "config"), str(one / "config")]))
    assert swapped.server == "https://c2:6443"
    with pytest.raises(AccessError, match="no such file"):
        load_access(os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))


# --------------------------------------------------------------------------- exec


def test_exec_plugin_gets_the_spec_and_its_token_is_cached_until_expiry(tmp_path: Path) -> None:
    user = _exec_user(tmp_path, expires_in=3600, provideClusterInfo=True)
    ca = base64.b64encode(b"CA").decode()
    path = _write(tmp_path, user, {"server": "https://eks:443", "certificate-authority-data": ca})
    access = from_kubeconfig(path)
    assert _runs(tmp_path) == 0  # nothing runs while the kubeconfig is read
    assert access.headers() == [("Authorization", "Bearer exec-token-1")]
    assert access.headers() == [("Authorization", "Bearer exec-token-1")]
    assert asyncio.run(access.refresh()) is not None
    assert _runs(tmp_path) == 1  # cached while it has not expired
    seen = json.loads((tmp_path / "count.seen").read_text())
    assert seen["args"] == ["get-token", "--cluster", "demo"]
    assert seen["info"]["apiVersion"] == EXEC_V1 and seen["info"]["kind"] == "ExecCredential"
    assert seen["info"]["spec"]["interactive"] is False
    assert seen["info"]["spec"]["cluster"] == {
        "server": "https://eks:443",
        "certificate-authority-data": ca,
    }
    # kopf gets the token and its expiration, so that it logs in again before it passes.
    info = connection_info(access)
    assert info.token == "exec-token-1"
    assert info.expiration is not None
    assert timedelta(minutes=59) < info.expiration - datetime.now(UTC) < timedelta(minutes=60)


def test_exec_plugin_runs_again_once_its_token_expires(tmp_path: Path) -> None:
    # Expires in 11 s: renewed 10 s early (EXPIRY_MARGIN), so it is fresh for about 1 s.
    access = from_kubeconfig(_write(tmp_path, _exec_user(tmp_path, 11), {"server": "http://h"}))
    assert access.headers() == [("Authorization", "Bearer exec-token-1")]
    assert access.headers() == [("Authorization", "Bearer exec-token-1")]
    assert _runs(tmp_path) == 1
    (tmp_path / "expires").write_text("3600")
    time.sleep(1.2)
    assert asyncio.run(access.refresh()) is not None  # async callers: run off the loop
    assert access.headers() == [("Authorization", "Bearer exec-token-2")]
    assert _runs(tmp_path) == 2
    # No provideClusterInfo: no cluster in the spec.
    assert "cluster" not in json.loads((tmp_path / "count.seen").read_text())["info"]["spec"]


def test_exec_plugin_failure_names_user_command_and_stderr(tmp_path: Path) -> None:
    failing = _script(
        tmp_path, "fail.py", "sys.stderr.write('ExpiredToken: the SSO session expired\\n')\n"
        "sys.exit(3)\n"
    )  # fmt: skip
    spec = {"apiVersion": EXEC_V1, "command": str(failing), "interactiveMode": "IfAvailable"}
    access = from_kubeconfig(_write(tmp_path, {"exec": spec}, {"server": "http://h"}))
    with pytest.raises(AccessError) as err:
        access.headers()
    message = str(err.value)
    assert "'u'" in message
    assert f"exec: executable {failing} failed with exit code 3" in message
    assert "ExpiredToken: the SSO session expired" in message


def test_exec_plugin_not_installed_shows_the_install_hint(tmp_path: Path) -> None:
    spec = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",  # interactiveMode defaults
        "command": "gke-gcloud-auth-plugin-not-here",
        "installHint": "Install gke-gcloud-auth-plugin: gcloud components install ...",
    }
    access = from_kubeconfig(_write(tmp_path, {"exec": spec}, {"server": "http://h"}))
    with pytest.raises(AccessError) as err:
        asyncio.run(access.refresh())
    assert "exec: executable gke-gcloud-auth-plugin-not-here not found" in str(err.value)
    assert "Install gke-gcloud-auth-plugin" in str(err.value)


def test_exec_plugin_with_a_bad_answer(tmp_path: Path) -> None:
    wrong = _script(
        tmp_path, "wrong.py",
        'print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1",'
        ' "kind": "ExecCredential", "status": {"token": "t"}}))\n',
    )  # fmt: skip
    spec = {"apiVersion": EXEC_V1, "command": str(wrong), "interactiveMode": "Never"}
    access = from_kubeconfig(_write(tmp_path, {"exec": spec}, {"server": "http://h"}))
    with pytest.raises(AccessError, match="plugin returned version"):
        access.headers()


# --------------------------------------------------------------------------- auth-providers


def test_gcp_access_token_until_expiry_then_cmd_path(tmp_path: Path) -> None:
    helper = _script(
        tmp_path, "gcloud.py",
        "n = int(open(sys.argv[2]).read()) + 1 if os.path.exists(sys.argv[2]) else 1\n"
        "open(sys.argv[2], 'w').write(str(n))\n"
        f"print(json.dumps({{'credential': {{'access_token': f'gcp-{{n}}', "
        f"'token_expiry': '{_stamp(3600)[:-1]}.123456789Z'}}}}))\n",
    )  # fmt: skip
    config = {
        "cmd-path": str(helper),
        "cmd-args": f"config-helper {tmp_path / 'count'}",
        "token-key": "{.credential.access_token}",
        "expiry-key": "{.credential.token_expiry}",
    }
    fresh = {**config, "access-token": "cached", "expiry": _stamp(3600)}
    access = from_kubeconfig(
        _write(
            tmp_path, {"auth-provider": {"name": "gcp", "config": fresh}}, {"server": "http://h"}
        )
    )
    assert access.headers() == [("Authorization", "Bearer cached")]
    assert _runs(tmp_path) == 0
    stale = {**config, "access-token": "old", "expiry": _stamp(-60)}
    access = from_kubeconfig(
        _write(
            tmp_path, {"auth-provider": {"name": "gcp", "config": stale}}, {"server": "http://h"}
        )
    )
    assert access.headers() == [("Authorization", "Bearer gcp-1")]
    assert access.headers() == [("Authorization", "Bearer gcp-1")]  # cached until its expiry
    assert _runs(tmp_path) == 1


def _jwt(exp: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'iss': 'https://idp', 'exp': int(exp)})}.sig"


def test_oidc_id_token_then_a_clear_error_when_it_expired(tmp_path: Path) -> None:
    good = _jwt(time.time() + 3600)
    config = {"client-id": "kubernetes", "idp-issuer-url": "https://idp", "id-token": good}
    access = from_kubeconfig(
        _write(
            tmp_path, {"auth-provider": {"name": "oidc", "config": config}}, {"server": "http://h"}
        )
    )
    assert access.headers() == [("Authorization", f"Bearer {good}")]
    config["id-token"] = _jwt(time.time() - 60)
    access = from_kubeconfig(
        _write(
            tmp_path, {"auth-provider": {"name": "oidc", "config": config}}, {"server": "http://h"}
        )
    )
    with pytest.raises(AccessError, match="expired and no refresh-token") as err:
        access.headers()
    assert "'u'" in str(err.value)


async def test_oidc_refresh_token_grant_at_the_issuer(tmp_path: Path) -> None:
    """An expired id-token with a refresh-token: discovery, then the refresh-token grant at
    the issuer's token endpoint (a real local HTTP issuer)."""
    fresh = _jwt(time.time() + 3600)
    grants: list[dict[str, str]] = []

    async def discovery(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"token_endpoint": f"{issuer}/token"})

    async def token(request: aiohttp.web.Request) -> aiohttp.web.Response:
        grants.append(dict(await request.post()))  # type: ignore[arg-type]
        return aiohttp.web.json_response({"id_token": fresh, "refresh_token": "r2"})

    app = aiohttp.web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_post("/token", token)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    issuer = f"http://127.0.0.1:{port}"
    try:
        config = {
            "client-id": "kubernetes",
            "idp-issuer-url": issuer,
            "id-token": _jwt(time.time() - 60),
            "refresh-token": "r1",
        }
        user: dict[str, object] = {"auth-provider": {"name": "oidc", "config": config}}
        access = from_kubeconfig(_write(tmp_path, user, {"server": "http://h"}))
        await access.refresh()
        assert access.headers() == [("Authorization", f"Bearer {fresh}")]
        assert grants == [
            {"grant_type": "refresh_token", "refresh_token": "r1", "client_id": "kubernetes"}
        ]
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- impersonation

SA_USER = "system:serviceaccount:default:dev"
SA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]
DEV_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: dev, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dev, namespace: default}
rules: [{apiGroups: [""], resources: [pods], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dev}
subjects: [{kind: ServiceAccount, name: dev, namespace: default}]
"""


def _impersonating(cluster: Any, tmp_path: Path, token: str | None = None) -> Path:
    """The cluster's kubeconfig with ``as``/``as-groups``/``as-user-extra`` on its user."""
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    for entry in config["users"]:
        entry["user"].update(
            {"as": SA_USER, "as-groups": SA_GROUPS, "as-user-extra": {"reason": ["test"]}}
        )
        if token:
            entry["user"]["token"] = token
    path = tmp_path / "impersonating"
    path.write_text(yaml.safe_dump(config))
    return path


def test_impersonation_headers_reach_the_server(
    local_cluster: Any, kubectl: Any, tmp_path: Path
) -> None:
    from kubequant_operator.kube import Kube, KubeError
    from kubequant_operator.settings import Settings

    kubectl("apply", "-f", "-", input=DEV_RBAC, check=True)
    access = from_kubeconfig(_impersonating(local_cluster, tmp_path))
    assert access.impersonation_headers() == [
        ("Impersonate-User", SA_USER),
        *[("Impersonate-Group", g) for g in SA_GROUPS],
        ("Impersonate-Extra-reason", "test"),
    ]

    async def scenario() -> tuple[int, str]:
        kube = Kube(Settings(), access)
        try:
            await kube.request("GET", "/api/v1/namespaces/default/pods")
            with pytest.raises(KubeError) as err:
                await kube.request("GET", "/api/v1/namespaces/default/secrets")
            # kopf's login: a session of ours that sends the same headers.
            context = await login_context(access)
            assert isinstance(context, kopf.AiohttpSession)
            async with context.aiohttp_session as session:
                url = f"{context.server}/api/v1/namespaces/default/secrets"
                async with session.get(url) as resp:
                    body = await resp.json()
            return err.value.status, str(err.value) + "|" + body["message"]
        finally:
            await kube.close()

    local_cluster.emulator.clear_calls()
    status, messages = asyncio.run(scenario())
    assert status == 403
    own, kopfs = messages.split("|")
    for message in (own, kopfs):
        assert f'User "{SA_USER}" cannot list resource "secrets"' in message
    calls = local_cluster.emulator.api_calls()
    assert [(c.resource, c.code, c.user) for c in calls] == [
        ("pods", 200, SA_USER),
        ("secrets", 403, SA_USER),
        ("secrets", 403, SA_USER),
    ]


def test_impersonation_needs_the_impersonate_right(
    local_cluster: Any, kubectl: Any, tmp_path: Path
) -> None:
    """A requester without ``impersonate`` is refused: the headers are really sent and
    checked (here the requester is a ServiceAccount token, not the admin)."""
    from kubequant_localkube.rbac import service_account_token
    from kubequant_operator.kube import Kube, KubeError
    from kubequant_operator.settings import Settings

    kubectl("apply", "-f", "-", input=DEV_RBAC, check=True)
    token = service_account_token("default", "dev")
    access = from_kubeconfig(_impersonating(local_cluster, tmp_path, token=token))

    async def scenario() -> KubeError:
        kube = Kube(Settings(), access)
        try:
            with pytest.raises(KubeError) as err:
                await kube.request("GET", "/api/v1/namespaces/default/pods")
            return err.value
        finally:
            await kube.close()

    error = asyncio.run(scenario())
    assert error.status == 403
    assert 'cannot impersonate resource "serviceaccounts"' in error.message


def test_exec_plugin_client_certificate_reaches_kopf(tmp_path: Path) -> None:
    pem = _script(
        tmp_path, "cert.py",
        'print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1",'
        ' "kind": "ExecCredential", "status": {"clientCertificateData": "CERT PEM",'
        ' "clientKeyData": "KEY PEM"}}))\n',
    )  # fmt: skip
    spec = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(pem)}
    access = from_kubeconfig(_write(tmp_path, {"exec": spec}, {"server": "http://h"}))
    assert access.client_certificate() == (None, b"CERT PEM", None, b"KEY PEM")
    assert access.headers() == []  # no token: the certificate authenticates
    info = connection_info(access)
    assert (info.certificate_data, info.private_key_data) == (b"CERT PEM", b"KEY PEM")
    assert info.expiration is None  # no expirationTimestamp: kept until a 401
