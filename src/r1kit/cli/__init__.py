"""The `r1kit` command: argument parsing and dispatch (the only place that reads argv and the environment), and the
multi-stage recipes it runs.

- main.py: the parser and the commands of the RL, evaluation, cost and report side (layer 5);
- commands.py: the commands of the distillation and pipeline side (layer 5);
- recipe.py: reading and checking multi-stage recipes; pipeline.py: running them stage by stage (layer 4).
"""
