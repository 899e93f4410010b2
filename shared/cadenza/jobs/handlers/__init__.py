"""One module per job type, each with `run(ctx) -> Outcome`; named in `cadenza.jobs.registry`."""
