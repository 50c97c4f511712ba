"""What a run costs, measured and predicted: the ledger, devices and prices, the estimate, the memory plan.

- ledger.py: phases, counters, FLOPs per token, the JSONL ledger and its summary tables (layer 0); hardware.py:
  device peaks, memory, power and prices per device-hour (layer 0);
- paper.py: DeepSeek's published cost table recomputed (layer 0); memplan.py: memory per device (layer 0);
- devices.py: the device kind and count, the CPU's measured peak, NVML energy, a ready Ledger (layer 1);
- calibration.py, estimate.py, views.py (estimate beside measured), preflight.py (will it fit, before step 1):
  the estimate of a run before launch and its check against the run (layer 4: they read models and tasks).
"""
