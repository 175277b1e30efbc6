"""A pod's container as a local process sees it: directories, volumes, environment.

Volumes map to local directories (PVCs to ``<state_dir>/pvc/<claim>``, emptyDirs and
projected ConfigMaps/Secrets to per-pod dirs, hostPaths to themselves); paths under a mount
in the command, working dir and env are rewritten to the local directory; ``KUBECONFIG``
points at the emulator with a token naming the pod's ServiceAccount.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from urllib.parse import quote

from kubequant_localkube import errors, rbac
from kubequant_localkube.objects import Obj
from kubequant_localkube.store import Store

Mounts = list[tuple[str, str]]  # (mount path in the container, local directory), longest first


class StateDirs:
    """Where the local control plane keeps PVC contents and per-pod scratch."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def pvc(self, claim: str) -> Path:
        # A pod's claimName is only required to be non-empty by the API server: escaped to one
        # directory name ('/' and '%' quoted, '.' and '..' too) so it never leaves <root>/pvc.
        name = quote(claim, safe="")
        if name in (".", ".."):
            name = name.replace(".", "%2E")
        path = self.root / "pvc" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pod(self, namespace: str, pod: str) -> Path:
        path = self.root / "pods" / namespace / pod
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cleanup_pods(self) -> None:
        shutil.rmtree(self.root / "pods", ignore_errors=True)


def mounts(
    store: Store, dirs: StateDirs, ns: str, spec: Obj, container: Obj, *, pdir: Path
) -> Mounts:
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    out: Mounts = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm.get("name")) or {}
        if "persistentVolumeClaim" in vol:
            local = dirs.pvc(vol["persistentVolumeClaim"]["claimName"])
        elif "hostPath" in vol:
            local = Path(vol["hostPath"]["path"])
        elif "configMap" in vol or "secret" in vol:
            local = pdir / "volumes" / str(vm.get("name"))
            materialize(store, ns, vol, local)
        else:  # emptyDir and everything else: a per-pod directory
            local = pdir / "volumes" / str(vm.get("name"))
        if vm.get("subPath"):
            local = local / vm["subPath"]
        local.mkdir(parents=True, exist_ok=True)
        out.append((str(vm["mountPath"]).rstrip("/") or "/", str(local)))
    out += parent_mappings(out)
    out.sort(key=lambda m: len(m[0]), reverse=True)
    return out


def materialize(store: Store, ns: str, vol: Obj, local: Path) -> None:
    """Write a ConfigMap's or Secret's keys as files, as the kubelet projects them."""
    local.mkdir(parents=True, exist_ok=True)
    if "configMap" in vol:
        cm = store.try_get(store.resource("", "v1", "configmaps"), ns, vol["configMap"]["name"])
        for k, v in ((cm or {}).get("data") or {}).items():
            (local / k).write_text(v)
    else:
        sec = store.try_get(store.resource("", "v1", "secrets"), ns, vol["secret"]["secretName"])
        for k, v in ((sec or {}).get("data") or {}).items():
            (local / k).write_bytes(base64.b64decode(v))


def rewrite(value: str, mapped: Mounts) -> str:
    """A container path as the local path it maps to (unchanged if under no mount)."""
    for mount, local in mapped:
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount) :]
    return value


def container_env(
    store: Store,
    ns: str,
    container: Obj,
    mapped: Mounts,
    *,
    term_path: str,
    term_file: Path,
    extra_env: dict[str, str],
    pod_dir: Path | None,
    service_account: str | None,
    pod_identity: bool,
    api_url: str | None,
    kubeconfig_path: Path | None,
) -> dict[str, str]:
    """The process's environment: this one's (less ``KUBERNETES_*``), ``extra_env``, the
    container's ``envFrom`` and ``env`` (a missing required key: a 404 ApiError, which the
    kubelet reports as CreateContainerConfigError) and ``KUBECONFIG``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(extra_env)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        data = source_data(store, ns, src.get("secretRef"), src.get("configMapRef"))
        for k, v in data.items():
            env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
        elif "valueFrom" in item:
            vf = item["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                named = {"name": ref["name"], "optional": ref.get("optional")}
                data = source_data(
                    store,
                    ns,
                    named if "secretKeyRef" in vf else None,
                    named if "configMapKeyRef" in vf else None,
                )
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                    raise errors.ApiError(
                        404, f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}"
                    )
            elif "fieldRef" in vf:
                env[name] = ""
    for k, v in list(env.items()):
        if k in {item["name"] for item in container.get("env") or []}:
            env[k] = str(term_file) if v == term_path else rewrite(v, mapped)
    if pod_identity and api_url and pod_dir is not None:
        sa = service_account or "default"
        path = pod_dir / "kubeconfig"
        token = rbac.service_account_token(ns, sa)
        url = rbac.identity_url(api_url, ns, sa)
        path.write_text(rbac.kubeconfig_text(url, ns, token))
        env["KUBECONFIG"] = str(path)
    elif kubeconfig_path is not None:
        env["KUBECONFIG"] = str(kubeconfig_path)
    return env


def config_error(store: Store, ns: str, containers: list[Obj]) -> str | None:
    """Why the kubelet cannot make the containers' environment, as it words it, or None.

    A Secret or ConfigMap named by ``envFrom`` or ``env[].valueFrom`` that does not exist, or
    a key it lacks, unless ``optional``: the real kubelet (``makeEnvironmentVariables`` in
    ``pkg/kubelet/kubelet_pods.go``) then leaves the container waiting with reason
    ``CreateContainerConfigError`` and retries on its next sync."""
    for container in containers:
        try:
            for src in container.get("envFrom") or []:
                source_data(store, ns, src.get("secretRef"), src.get("configMapRef"))
            for item in container.get("env") or []:
                vf = item.get("valueFrom") or {}
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                if not ref:
                    continue
                is_secret = "secretKeyRef" in vf
                named = {"name": ref["name"], "optional": ref.get("optional")}
                data = source_data(
                    store, ns, named if is_secret else None, None if is_secret else named
                )
                if ref["key"] not in data and not ref.get("optional"):
                    kind = "Secret" if is_secret else "ConfigMap"
                    return f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}"
        except errors.ApiError as exc:
            return exc.message
    return None


def source_data(
    store: Store, ns: str, secret_ref: Obj | None, cm_ref: Obj | None
) -> dict[str, str]:
    if secret_ref:
        sec = store.try_get(store.resource("", "v1", "secrets"), ns, secret_ref["name"])
        if sec is None:
            if secret_ref.get("optional"):
                return {}
            raise errors.ApiError(404, f'secret "{secret_ref["name"]}" not found')
        out = {k: base64.b64decode(v).decode() for k, v in (sec.get("data") or {}).items()}
        out.update(sec.get("stringData") or {})
        return out
    if cm_ref:
        cm = store.try_get(store.resource("", "v1", "configmaps"), ns, cm_ref["name"])
        if cm is None:
            if cm_ref.get("optional"):
                return {}
            raise errors.ApiError(404, f'configmap "{cm_ref["name"]}" not found')
        return dict(cm.get("data") or {})
    return {}


def parent_mappings(mapped: Mounts) -> Mounts:
    """Directories above mount points that map consistently, e.g. ``/mnt/kubequant/pvc`` ->
    ``<state>/pvc`` when ``/mnt/kubequant/pvc/<claim>`` -> ``<state>/pvc/<claim>`` for every
    mounted claim (the engine resolves ``pvc://claim/path`` against the mount root)."""
    found: dict[str, str | None] = {}
    for mount, local in mapped:
        parts = mount.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            suffix = mount[len(parent) :]
            guess = local[: -len(suffix)] if local.endswith(suffix) else None
            if parent in found and found[parent] != guess:
                guess = None
            found[parent] = guess
    taken = {m for m, _ in mapped}
    return [(p, lp) for p, lp in found.items() if lp and p not in taken]
