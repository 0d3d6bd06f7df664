"""Training methods built on ``transformers.Trainer`` (and TRL where it already does the job).

Each method lives in its own module (``oreo``, ``first``, ``auto_cei``, ``bolt``; ``sft`` is the TRL
set-up Auto-CEI and BOLT share, ``calibration`` the metrics any model can use); they sit above
``ponder.ops`` / ``ponder.rewards`` / ``ponder.decoding`` and below the toy world and the command
line (tests/test_layers.py). Import the method module you need; this package imports nothing heavy.
"""
