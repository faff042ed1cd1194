"""HTTP endpoints: each parses the request, calls shared code, and shapes the response. No business rules here
beyond the access decision (grantee, expiry), which lives in ``common``."""
