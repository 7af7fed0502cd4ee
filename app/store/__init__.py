"""Everything kept per destination in Redis: pending changes coalesced per prospect, dataflow
counters, dead letters, resync, and the published catalog of destinations and connections."""
