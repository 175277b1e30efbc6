"""Cluster access from a kubeconfig or a service account, without a client library."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from kubequant_operator.access import AccessError, from_kubeconfig, in_cluster, load_access
from kubequant_operator.handlers import connection_info


def _write(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns1"}}
                ],
                "current-context": "x",
            }
        )
    )
    return path


def test_token_and_ca_data(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()
    path = _write(
        tmp_path, {"token": "abc"}, {"server": "https://k:6443/", "certificate-authority-data": ca}
    )
    access = from_kubeconfig(path)
    assert access.server == "https://k:6443"
    assert access.ca_data == b"-----BEGIN CERTIFICATE-----"
    assert access.headers() == {"Authorization": "Bearer abc"}
    assert access.namespace == "ns1"
    info = connection_info(access)
    assert info.server == "https://k:6443"
    assert info.token == "abc" and info.scheme == "Bearer"


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
    assert access.headers() == {"Authorization": "Bearer from-file"}
    assert access.ssl_context() is False  # http: no TLS


def test_basic_auth(tmp_path: Path) -> None:
    path = _write(tmp_path, {"username": "a", "password": "b"}, {"server": "http://h"})
    expected = "Basic " + base64.b64encode(b"a:b").decode()
    assert from_kubeconfig(path).headers() == {"Authorization": expected}


@pytest.mark.parametrize(
    ("user", "cluster", "needle"),
    [
        ({"exec": {"command": "aws"}}, {"server": "https://h"}, "exec"),
        ({}, {}, "no cluster with a server"),
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
    assert access.headers() == {"Authorization": "Bearer sa-token"}
    assert in_cluster({}, tmp_path) is None
