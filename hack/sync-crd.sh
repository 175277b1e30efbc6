#!/usr/bin/env bash
# Copy the generated CRD (crds/, from `make crd`) into the chart; a test fails when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
cp crds/modeloptimization.yaml charts/kubequant/files/modeloptimization.yaml
