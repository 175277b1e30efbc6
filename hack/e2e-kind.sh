#!/usr/bin/env bash
# End to end on a real Kubernetes: a kind cluster, both images built and loaded, the chart
# installed, one CPU ModelOptimization (all-MiniLM-L6-v2 -> torchao int8) taken to Ready,
# its results checked in status, the cluster deleted.
#
# Needs docker, kind, kubectl, helm and network access (the engine downloads the model).
# Environment:
#   KIND_CLUSTER      cluster name (default kubequant-e2e)
#   KIND_NODE_IMAGE   node image, e.g. kindest/node:v1.29.14 (default: kind's own)
#   E2E_TAG           image tag (default e2e)
#   E2E_ENGINE_GPU    1: build the CUDA engine image instead of the small CPU one (default 0)
#   E2E_TIMEOUT       how long to wait for Ready (default 30m)
#   E2E_KEEP          1: keep the cluster afterwards for debugging (default 0)
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER="${KIND_CLUSTER:-kubequant-e2e}"
TAG="${E2E_TAG:-e2e}"
TIMEOUT="${E2E_TIMEOUT:-30m}"
SYSTEM_NS=kubequant-system
WORK_NS=kubequant-e2e
OPERATOR_IMAGE="kubequant/operator:${TAG}"
ENGINE_IMAGE="kubequant/engine:${TAG}"
OBJECT=minilm-int8

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "failed (rc=$rc): diagnostics"
    kubectl get mopt,jobs,pods -A -o wide || true
    kubectl -n "$WORK_NS" get mopt "$OBJECT" -o yaml || true
    kubectl -n "$WORK_NS" get events --sort-by=.lastTimestamp || true
    kubectl -n "$SYSTEM_NS" logs deployment/kubequant --tail=200 || true
    kubectl -n "$WORK_NS" logs -l app.kubernetes.io/managed-by=kubequant --tail=200 || true
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}
trap cleanup EXIT

log "creating kind cluster $CLUSTER"
kind_args=(create cluster --name "$CLUSTER" --wait 180s)
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  kind_args+=(--image "$KIND_NODE_IMAGE")
fi
kind "${kind_args[@]}"
kubectl version

log "building images"
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
engine_args=()
if [ "${E2E_ENGINE_GPU:-0}" != 1 ]; then
  # The CPU variant: no CUDA base (GBs smaller), torch's CPU wheel of the same version.
  engine_args+=(--build-arg CUDA_IMAGE=ubuntu:24.04
                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
fi
docker build -f optimizer_job/Dockerfile "${engine_args[@]}" -t "$ENGINE_IMAGE" .
kind load docker-image "$OPERATOR_IMAGE" "$ENGINE_IMAGE" --name "$CLUSTER"

log "installing the chart"
kubectl create namespace "$WORK_NS"
# The engine pods must be admitted by the restricted Pod Security Standard.
kubectl label namespace "$WORK_NS" pod-security.kubernetes.io/enforce=restricted
helm install kubequant charts/kubequant \
  --namespace "$SYSTEM_NS" --create-namespace \
  --set fullnameOverride=kubequant \
  --set image.repository=kubequant/operator --set image.tag="$TAG" \
  --set image.pullPolicy=Never \
  --set engine.image.repository=kubequant/engine --set engine.image.tag="$TAG" \
  --set engine.image.pullPolicy=Never \
  --set "watchNamespaces={$WORK_NS}" \
  --wait --timeout 5m
kubectl -n "$SYSTEM_NS" rollout status deployment/kubequant --timeout=2m

log "applying the CPU example"
kubectl apply -n "$WORK_NS" -f - <<'YAML'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: models
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 2Gi
---
apiVersion: kubequant.io/v1alpha1
kind: ModelOptimization
metadata:
  name: minilm-int8
spec:
  model:
    uri: hf://sentence-transformers/all-MiniLM-L6-v2
    task: feature-extraction
  method: torchao-int8-weight
  evaluation:
    samples: 16
    qualityGate:
      minCosineSimilarity: 0.98
  output:
    uri: pvc://models/minilm-int8
  resources:
    gpu: 0
    cpu: "2"
    memory: 4Gi
  timeoutSeconds: 1800
  retries: 0
YAML

log "waiting for Ready (up to $TIMEOUT)"
kubectl -n "$WORK_NS" wait --for=condition=Ready "mopt/$OBJECT" --timeout="$TIMEOUT"
kubectl -n "$WORK_NS" get mopt "$OBJECT"

log "checking the results in status"
jp() { kubectl -n "$WORK_NS" get mopt "$OBJECT" -o jsonpath="$1"; }
phase="$(jp '{.status.phase}')"
gate="$(jp '{.status.result.qualityGate}')"
ratio="$(jp '{.status.result.compressionRatio}')"
cosine="$(jp '{.status.result.cosineSimilarity}')"
output="$(jp '{.status.result.outputUri}')"
observed="$(jp '{.status.observedGeneration}')"
generation="$(jp '{.metadata.generation}')"
printf 'phase=%s gate=%s ratio=%s cosine=%s output=%s generation=%s/%s\n' \
  "$phase" "$gate" "$ratio" "$cosine" "$output" "$observed" "$generation"
[ "$phase" = Succeeded ] || { log "phase is $phase, want Succeeded"; exit 1; }
[ "$gate" = Passed ] || { log "quality gate is $gate, want Passed"; exit 1; }
[ "$output" = pvc://models/minilm-int8 ] || { log "outputUri is $output"; exit 1; }
[ "$observed" = "$generation" ] || { log "observedGeneration $observed != $generation"; exit 1; }
awk -v r="$ratio" 'BEGIN { exit !(r > 1.5) }' || { log "compressionRatio $ratio <= 1.5"; exit 1; }
awk -v c="$cosine" 'BEGIN { exit !(c >= 0.98) }' || { log "cosineSimilarity $cosine < 0.98"; exit 1; }

log "e2e passed"
