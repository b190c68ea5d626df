"""An empirical comparison research harness for instruction tuning.

Data flow: data -> model -> train -> eval -> grid -> results (see README.md).
"""

__version__ = "0.1.0"
