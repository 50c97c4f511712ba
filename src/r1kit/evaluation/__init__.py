"""Evaluation as the R1 paper does it: pass@1 over k samples at T=0.6/top-p 0.95, cons@k, pass@k.

- metrics.py: the statistics and the eval config (layer 0);
- evaluate.py: sample a model on held-out problems and score them with the task's own verifier (layer 3).
"""
