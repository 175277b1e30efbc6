"""kubequant's local control plane: a Kubernetes API emulator and a Job controller.

No cluster can run on a developer laptop without Docker, nor in this project's CI; kopf,
the ``kubernetes`` client and ``kubectl`` all work against this emulator instead::

    from kubequant_localkube import LocalCluster, Outcome

    with LocalCluster(run_pods=True) as cluster:      # serves http://127.0.0.1:<free port>
        print(cluster.kubeconfig_path)               # for kubectl / kopf / the kubernetes client
        cluster.outcomes["qwen-*"] = Outcome(exit_code=3, message="quality gate failed")
        cluster.emulator.inject_failures("patch", "modeloptimizations", count=2, status=500)

Or from a shell: ``kubequant-localkube serve --run-pods`` (see ``--help``).

- :mod:`.emulator` — the API server (kmock-based): discovery, CRDs, watches, patches,
  status subresource, selectors, garbage collection, finalizers, Tables, OpenAPI, admission
  (schema + CEL) for custom resources, fault injection and a request log.
- :mod:`.jobs` — the Job controller and kubelet: scripted outcomes or local processes.
- :mod:`.cluster` — :class:`LocalCluster`, both in a background thread.
"""

from kubequant_localkube.cluster import LocalCluster
from kubequant_localkube.emulator import ApiCall, Fault, LocalKubeEmulator
from kubequant_localkube.errors import ApiError, LocalKubeError
from kubequant_localkube.jobs import RUN_PROCESS, SUCCEED, JobController, Outcome, OutcomeTable
from kubequant_localkube.rbac import kubeconfig_for
from kubequant_localkube.store import Store

__all__ = [
    "RUN_PROCESS",
    "SUCCEED",
    "ApiCall",
    "ApiError",
    "Fault",
    "JobController",
    "LocalCluster",
    "LocalKubeEmulator",
    "LocalKubeError",
    "Outcome",
    "OutcomeTable",
    "Store",
    "kubeconfig_for",
]
