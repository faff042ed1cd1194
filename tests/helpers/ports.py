"""Free loopback ports for tests: nothing in the suite depends on a fixed port."""

from __future__ import annotations

from strongroom.dev.servers import free_port, port_is_free

__all__ = ["free_port", "port_is_free"]
