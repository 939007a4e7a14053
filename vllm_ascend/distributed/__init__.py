"""Distributed glue: what vLLM's parallel groups need from the device layer."""
