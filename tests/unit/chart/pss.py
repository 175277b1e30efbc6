"""The Pod Security Standards "restricted" profile (Kubernetes 1.29+), as a checker.

It follows https://kubernetes.io/docs/concepts/security/pod-security-standards/: every
baseline control, then the restricted ones. ``violations`` returns one message per broken
rule (empty: the pod spec is admitted by a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``).
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]

# Restricted: the only volume types allowed.
ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Baseline: the sysctls considered safe.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
ALLOWED_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_APPARMOR = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_ADDED_CAPS = frozenset({"NET_BIND_SERVICE"})


def _containers(spec: Manifest) -> list[tuple[str, Manifest]]:
    out: list[tuple[str, Manifest]] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or []:
            out.append((f"{key}[{c.get('name', '?')}]", c))
    return out


def _selinux_ok(opts: Manifest | None) -> bool:
    if not opts:
        return True
    return (
        opts.get("type", "") in ALLOWED_SELINUX_TYPES
        and not opts.get("user")
        and not (opts.get("role"))
    )


def violations(spec: Manifest, annotations: Manifest | None = None) -> list[str]:
    """Every way ``spec`` (a PodSpec) breaks the restricted profile."""
    bad: list[str] = []
    psc: Manifest = spec.get("securityContext") or {}
    containers = _containers(spec)
    if not spec.get("containers"):
        bad.append("pod has no containers")

    # ---- baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{key} must be false or unset")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("securityContext.windowsOptions.hostProcess must not be true")
    if not _selinux_ok(psc.get("seLinuxOptions")):
        bad.append("securityContext.seLinuxOptions: type/user/role not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        bad.append("securityContext.seccompProfile.type must not be Unconfined")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append("securityContext.appArmorProfile.type must not be Unconfined")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            bad.append(f"annotation {key}={value} is not an allowed AppArmor profile")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            bad.append(f"volume {volume.get('name')}: hostPath is forbidden")
        elif not kinds <= ALLOWED_VOLUME_TYPES:
            bad.append(f"volume {volume.get('name')}: type {sorted(kinds)} is not allowed")

    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        bad.append("securityContext.runAsUser must not be 0")

    for where, c in containers:
        sc: Manifest = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{where}: privileged must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{where}: windowsOptions.hostProcess must not be true")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{where}: hostPort {port['hostPort']} is forbidden")
        if not _selinux_ok(sc.get("seLinuxOptions")):
            bad.append(f"{where}: seLinuxOptions type/user/role not allowed")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount must be Default")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{where}: appArmorProfile.type must not be Unconfined")

        # ---- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            bad.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ALLOWED_SECCOMP:
            bad.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps: Manifest = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{where}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - ALLOWED_ADDED_CAPS
        if extra:
            bad.append(f"{where}: capabilities.add {sorted(extra)} beyond NET_BIND_SERVICE")
    return bad
