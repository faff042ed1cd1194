"""The embedded development stack: ``strongroom dev`` and the servers it starts. Never used in production."""
