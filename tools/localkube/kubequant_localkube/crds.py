"""CustomResourceDefinitions as the API server accepts them: checked, compiled, established."""

from __future__ import annotations

from kubequant_localkube import errors
from kubequant_localkube import resources as res_mod
from kubequant_localkube.admission import Admission
from kubequant_localkube.objects import Obj, now_rfc3339


def prepare_crd(crd: Obj, admission: Admission) -> None:
    """Check a CRD about to be stored and give it the status a real server would.

    Its name must be ``<plural>.<group>`` and every CEL rule must compile (a CRD with a
    broken rule is rejected, as by a real server); it is then NamesAccepted and Established.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    try:
        expected = f"{names['plural']}.{spec['group']}"
    except KeyError as exc:
        raise errors.invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            crd["metadata"].get("name", ""),
            [
                {
                    "field": f"spec.{exc.args[0]}",
                    "message": "Required value",
                    "reason": "FieldValueRequired",
                }
            ],
        ) from exc
    if crd["metadata"]["name"] != expected:
        raise errors.invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            crd["metadata"]["name"],
            [
                {
                    "field": "metadata.name",
                    "message": f'Invalid value: "{crd["metadata"]["name"]}": '
                    'must be spec.names.plural+"."+spec.group',
                    "reason": "FieldValueInvalid",
                }
            ],
        )
    for res in res_mod.resources_from_crd(crd):
        admission.compile(res)
    names = dict(names)
    names.setdefault("singular", names.get("kind", "").lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    now = now_rfc3339()
    crd["status"] = {
        "acceptedNames": names,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
        "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
    }
