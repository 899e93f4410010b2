"""Helpers shared by the test suite and the bench scripts (no pytest imports here).

`tests.support.services` gives real PostgreSQL, Redis and an S3 endpoint (SeaweedFS): the
suite never mocks a database, broker or object store, so these helpers start the real ones
when they are installed but stopped (a fresh CI machine) and isolate concurrent test runs.
"""
