"""Run model-written Python so that nothing escapes and no verdict can be forged (bubblewrap + rlimits).

placeholder docstring: replaced below
"""

from r1kit.sandbox.run import Job, Limits, Result, check_sandbox, run_many, run_python, same_output

__all__ = ["Job", "Limits", "Result", "check_sandbox", "run_many", "run_python", "same_output"]
