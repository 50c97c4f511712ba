"""The loops, as plain functions that tests call in-process: base pre-training, RL, rejection sampling, SFT and
distillation. Layer 4. A loop never imports another; what two loops share lives a layer below.
"""
