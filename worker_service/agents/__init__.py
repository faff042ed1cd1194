"""Agents: the registry, the sandboxed runner and the built-in privacy-audit agent."""
