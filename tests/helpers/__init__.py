"""Fixture code shared by the test suite (importable as ``tests.helpers``)."""
