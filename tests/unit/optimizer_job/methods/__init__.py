"""Tests of the quantization methods, run on real models."""
