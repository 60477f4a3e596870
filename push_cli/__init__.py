"""Operator tooling for the post-call CRM push: preview, lint, replay, status.

Not part of the Lambda layer: it runs on an operator's machine (or CI, to
gate a config change) against the same tables the function uses.
"""
