"""Status notifications: how a worker's record write wakes the API requests long-polling that operation.

The contract:

* every write of an operation's record (``shared.records.OperationStore``: the worker's claim and final status, a
  cancel or delete through the API, the monitor failing a dead run) PUBLISHes the operation id on
  ``layout.REDIS_STATUS_CHANNEL``, in the same round trip that replaces the record's version token, after the
  S3 write;
* each API process keeps one subscriber on that channel (``api_service.long_poll``) and wakes only the requests
  waiting on that id; they re-read the record, which stays the only truth.

A notification is a hint: a subscriber that misses one (reconnecting) is covered by each waiter's periodic
re-check, so a lost notification delays an answer by at most that interval; it never makes one wrong.
"""

from shared.layout import REDIS_STATUS_CHANNEL

__all__ = ["REDIS_STATUS_CHANNEL"]
