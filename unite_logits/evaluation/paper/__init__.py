"""The UniTE paper's evaluation protocols (its prompts, answer reading and data files), which
lm-eval lacks; run through the shipped lm-eval tasks ``unite_paper_*``.

``tasks`` (loading and scoring each benchmark), ``prompts`` (each prompt format, once),
``extract`` (reading an answer from free text, once).
"""
