"""Tests of the container images, the e2e script and the CI workflow."""
