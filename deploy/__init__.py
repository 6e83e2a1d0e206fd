"""Running Sluice: the `sluice` command, the local supervisor (`sluice up`) and the
embedded broker. Compose and Kubernetes manifests for production live beside it.

This is the composition root: it may start any service, and no service imports it.
"""
