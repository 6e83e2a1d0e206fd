"""The streams app: one Faust app that turns usage and request events into limits,
quotas, bills and A/B metrics, kept as stateful tables."""
