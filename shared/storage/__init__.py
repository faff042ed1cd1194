"""Object storage behind one narrow interface: ``ObjectStore``. S3 (``s3.py``) in production and tests;
an in-memory store (``memory.py``) for fast unit tests of code above the storage layer."""

from shared.storage.base import ObjectInfo, ObjectStore, PendingUpload, PresignedUrl

__all__ = ["ObjectInfo", "ObjectStore", "PendingUpload", "PresignedUrl"]
