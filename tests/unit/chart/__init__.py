"""Tests of the Helm chart (charts/kubequant)."""
