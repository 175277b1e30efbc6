"""Tests of the GitOps integration (deploy/, Argo CD health check)."""
