"""The embedded development stack: ``strongroom dev`` and the servers it starts. Never used in production: what
production commands share with it lives outside (``strongroom.files``, ``strongroom.connection``)."""
