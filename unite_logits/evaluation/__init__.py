"""Evaluation harness and compatibility report ("determine" half of UniTE).

Heavy pieces (models, the processor) are imported lazily by the functions that need
them, so importing this package is cheap.
"""
