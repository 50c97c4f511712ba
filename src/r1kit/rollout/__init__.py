"""Rollout engines: r1kit's own KV-cache sampler (sampler.py) and the vLLM backend (vllm.py), one interface."""
