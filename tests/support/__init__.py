"""Helpers shared by the test suite (no pytest imports here).

The suite never mocks a database, broker or object store. PostgreSQL and Redis come from
`cadenza.launch.postgres` and `cadenza.launch.redis` (the benchmarks use them too), a private
SeaweedFS S3 server from `tests.support.seaweedfs`, and the API + worker processes from
`tests.support.stack`. `tests.support.music` builds the small MIDI files tests craft.
"""
