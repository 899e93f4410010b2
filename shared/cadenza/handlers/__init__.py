"""Job handlers: the work behind each job type, called by `cadenza.runner`."""
