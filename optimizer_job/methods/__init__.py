"""Quantization methods; importing this package registers every one of them."""
