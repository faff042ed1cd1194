"""The worker pipeline: run an operation, store artifacts, audit trail, retention, monitoring, rotation."""
