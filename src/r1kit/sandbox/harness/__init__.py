"""The code that runs inside the sandbox (judge.py), shipped to it as one marshalled code object by run.py."""
