"""kubequant's local control plane: a Kubernetes API emulator and a Job controller.

No cluster can run on a developer laptop without Docker, nor in this project's CI; kopf,
the ``kubernetes`` client and ``kubectl`` all work against this emulator instead::

    from kubequant_localkube import LocalCluster, Outcome

    with LocalCluster(run_pods=True) as cluster:      # serves http://127.0.0.1:<free port>
        print(cluster.kubeconfig_path)               # for kubectl / kopf / the kubernetes client
        cluster.outcomes["qwen-*"] = Outcome(exit_code=3, message="quality gate failed")
        cluster.emulator.inject_failures("patch", "modeloptimizations", count=2, status=500)

Or from a shell: ``kubequant-localkube serve --run-pods`` (see ``--help``).

A development tool (``tools/localkube``, its own distribution, not in kubequant's wheel);
it imports nothing of the operator or the engine. Its parts:

- :mod:`.cluster` — :class:`LocalCluster`: the API server and the Job controller, served
  over real HTTP from a background thread.
- the API server: :mod:`.emulator` (routing and verbs, a plain aiohttp handler),
  :mod:`.discovery` (discovery, OpenAPI), :mod:`.tables`, :mod:`.watchstream`,
  :mod:`.httpio` (paths, bodies, selectors), :mod:`.calls` (request log, fault injection),
  :mod:`.rbac` (pods' service accounts).
- storage: :mod:`.store` (objects, reads and writes), :mod:`.watch` (history, watchers),
  :mod:`.gc` (garbage collection), :mod:`.registry` and :mod:`.crds` (served resources),
  :mod:`.objects` (what a write does to an object), :mod:`.ssa` (server-side apply),
  :mod:`.patching`, :mod:`.defaults`.
- admission: :mod:`.admission` (schema and CEL for custom resources).
- workloads: :mod:`.jobs` (the Job controller), :mod:`.kubelet` (pods; scripted
  :mod:`.outcomes`), :mod:`.processes` and :mod:`.podenv` (pods as local processes).
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
