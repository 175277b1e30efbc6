"""The operator's policy: what a user who may create a ModelOptimization may ask of the cluster.

Each refusal has its own reason and names the spec field and the setting that would allow it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kubequant_api.constants import STALLED_REASONS, Reason
from kubequant_api.models import parse_spec
from kubequant_operator.checks import image_allowed, policy_problem, priority_class_allowed
from kubequant_operator.settings import Settings

ENGINE = "ghcr.io/kubequant/engine:0.1.0"
BASE: dict[str, Any] = {
    "model": {"uri": "pvc://models/minilm", "task": "feature-extraction"},
    "method": "torchao-int8-weight",
    "output": {"uri": "pvc://models/out"},
}
CP = "node-role.kubernetes.io/control-plane"


def _spec(**fields: Any) -> Any:
    raw = copy.deepcopy(BASE)
    raw.update(fields)
    return parse_spec(raw)


def _refusal(s: Settings, **fields: Any) -> tuple[Reason, str] | None:
    found = policy_problem(_spec(**fields), s)
    return None if found is None else (found.reason, found.message)


def test_defaults_allow_an_ordinary_spec() -> None:
    s = Settings(engine_image=ENGINE)
    assert _refusal(s) is None
    assert _refusal(s, image=ENGINE) is None
    assert _refusal(s, resources={"priorityClassName": "batch-low"}) is None
    assert (
        _refusal(
            s,
            resources={
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "nodeSelector": {"gpu": "a100"},
            },
        )
        is None
    )


def test_image_outside_the_list_is_refused_naming_the_setting() -> None:
    s = Settings(engine_image=ENGINE)
    got = _refusal(s, image="docker.io/attacker/miner:latest")
    assert got is not None
    reason, message = got
    assert reason == Reason.IMAGE_NOT_ALLOWED and reason in STALLED_REASONS
    assert "spec.image" in message and "KUBEQUANT_ALLOWED_IMAGES" in message
    assert "docker.io/attacker/miner:latest" in message


@pytest.mark.parametrize(
    ("entries", "image", "allowed"),
    [
        ((), ENGINE, True),
        ((), "ghcr.io/kubequant/engine:0.2.0", False),
        (("ghcr.io/kubequant/engine:",), "ghcr.io/kubequant/engine:0.2.0", True),
        (("ghcr.io/kubequant/",), "ghcr.io/kubequant/engine-cu121:1", True),
        # an entry that does not end in / : @ is an exact image, never a prefix
        (("ghcr.io/kubequant/engine",), "ghcr.io/kubequant/engine-evil:1", False),
        (("ghcr.io/kubequant/engine",), "ghcr.io/kubequant/engine", True),
        (("registry.local/engine@",), "registry.local/engine@sha256:" + "a" * 64, True),
        (("ghcr.io/kubequant/",), "ghcr.io/kubequant-evil/engine:1", False),
        (("*",), "anything/at:all", True),
    ],
)
def test_image_entries(entries: tuple[str, ...], image: str, allowed: bool) -> None:
    assert image_allowed(image, Settings(engine_image=ENGINE, allowed_images=entries)) is allowed


@pytest.mark.parametrize("system", ["system-node-critical", "system-cluster-critical"])
def test_system_priority_classes_need_listing_by_name(system: str) -> None:
    s = Settings()
    got = _refusal(s, resources={"priorityClassName": system})
    assert got is not None
    assert got[0] == Reason.PRIORITY_CLASS_NOT_ALLOWED
    assert "spec.resources.priorityClassName" in got[1]
    assert "KUBEQUANT_ALLOWED_PRIORITY_CLASSES" in got[1]
    assert priority_class_allowed(system, Settings(allowed_priority_classes=("*", system)))


def test_priority_class_list_and_empty_list() -> None:
    listed = Settings(allowed_priority_classes=("batch-low",))
    assert priority_class_allowed("batch-low", listed)
    assert not priority_class_allowed("batch-high", listed)
    none = Settings(allowed_priority_classes=())
    got = _refusal(none, resources={"priorityClassName": "batch-low"})
    assert got is not None and got[0] == Reason.PRIORITY_CLASS_NOT_ALLOWED
    assert "empty" in got[1]
    assert _refusal(none) is None  # no class asked: nothing to refuse


def test_tolerate_everything_is_refused_unless_allowed() -> None:
    spec = {"tolerations": [{"operator": "Exists"}]}
    got = _refusal(Settings(), resources=spec)
    assert got is not None
    assert got[0] == Reason.PLACEMENT_NOT_ALLOWED
    assert "spec.resources.tolerations[0]" in got[1]
    assert "KUBEQUANT_ALLOW_TOLERATE_ALL" in got[1]
    assert _refusal(Settings(allow_tolerate_all=True), resources=spec) is None


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        (
            {"tolerations": [{"key": CP, "operator": "Exists", "effect": "NoSchedule"}]},
            "spec.resources.tolerations[0]",
        ),
        (
            {"tolerations": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]},
            "spec.resources.tolerations[0]",
        ),
        ({"nodeSelector": {CP: ""}}, "spec.resources.nodeSelector"),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": CP, "operator": "Exists"}]}
                            ]
                        }
                    }
                }
            },
            "nodeSelectorTerms[0].matchExpressions[0]",
        ),
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 10,
                                "preference": {
                                    "matchExpressions": [
                                        {"key": CP, "operator": "In", "values": ["true"]}
                                    ]
                                },
                            }
                        ]
                    }
                }
            },
            "preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0]",
        ),
    ],
)
def test_control_plane_placement_is_refused_unless_allowed(
    resources: dict[str, Any], field: str
) -> None:
    got = _refusal(Settings(), resources=resources)
    assert got is not None
    assert got[0] == Reason.PLACEMENT_NOT_ALLOWED
    assert field in got[1] and "KUBEQUANT_ALLOW_CONTROL_PLANE" in got[1]
    assert _refusal(Settings(allow_control_plane=True), resources=resources) is None


def test_keeping_away_from_the_control_plane_is_fine() -> None:
    avoid = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": CP, "operator": "DoesNotExist"}]}
                    ]
                }
            }
        }
    }
    assert _refusal(Settings(), resources=avoid) is None


def test_settings_read_the_policy_from_the_environment() -> None:
    s = Settings.load(
        {
            "KUBEQUANT_ALLOWED_IMAGES": "ghcr.io/acme/, registry.local/engine:2",
            "KUBEQUANT_ALLOWED_PRIORITY_CLASSES": "",
            "KUBEQUANT_ALLOW_TOLERATE_ALL": "true",
            "KUBEQUANT_ALLOW_CONTROL_PLANE": "false",
        }
    )
    assert s.allowed_images == ("ghcr.io/acme/", "registry.local/engine:2")
    assert s.allowed_priority_classes == ()
    assert s.allow_tolerate_all and not s.allow_control_plane
    defaults = Settings.load({})
    assert defaults.allowed_images == () and defaults.allowed_priority_classes == ("*",)


def test_chart_values_reach_the_operator_policy() -> None:
    """values.yaml's policy block becomes the operator's settings (and the schema checks it)."""
    render = pytest.importorskip("tests.unit.chart.render")
    sets = (
        'policy.allowedImages=["ghcr.io/acme/","registry.local/engine:2"]',
        'policy.allowedPriorityClasses=["batch-low","system-cluster-critical"]',
        "policy.allowTolerateAll=true",
    )
    args = ["template", render.RELEASE, str(render.CHART)]
    for one_set in sets:
        args += ["--set-json", one_set]
    docs = [d for d in yaml.safe_load_all(render.helm(*args).stdout) if d]
    env = render.env_of(render.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    s = Settings.load(env={k: v for k, v in env.items() if k.startswith("KUBEQUANT_")})
    assert s.allowed_images == ("ghcr.io/acme/", "registry.local/engine:2")
    assert s.allowed_priority_classes == ("batch-low", "system-cluster-critical")
    assert s.allow_tolerate_all and not s.allow_control_plane
    defaults = Settings.load(
        env={
            k: v
            for k, v in render.env_of(
                render.one(render.render(), "Deployment")["spec"]["template"]["spec"]["containers"][
                    0
                ]
            ).items()
            if k.startswith("KUBEQUANT_")
        }
    )
    assert defaults.allowed_images == () and defaults.allowed_priority_classes == ("*",)
    assert not defaults.allow_tolerate_all and not defaults.allow_control_plane
    bad = render.helm(
        "template",
        render.RELEASE,
        str(render.CHART),
        "--set-json",
        'policy.allowControlPlane="yes"',
        check=False,
    )
    assert bad.returncode != 0 and "/policy/allowControlPlane" in bad.stderr
