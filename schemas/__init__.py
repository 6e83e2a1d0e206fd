"""The contract between Sluice's services: OpenAI protocol models, events and topic names.

This package depends on pydantic and the standard library only; every service imports
it and no service imports another.
"""
