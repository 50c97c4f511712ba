"""How a run is spread over devices: device and precision choice, process groups, FSDP2 sharding, sharded checkpoints.

Decisions are made once, at the top of a loop, and passed down; lower layers never call `torch.cuda` themselves.
"""
