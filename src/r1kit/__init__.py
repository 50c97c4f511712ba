"""r1kit: train DeepSeek-R1-style reasoning models and know what every run cost."""

__version__ = "0.1.0"
