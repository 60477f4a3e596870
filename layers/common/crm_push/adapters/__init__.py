"""Adapters: the only places that talk to AWS or to a CRM over HTTP."""
