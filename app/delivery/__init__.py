"""Draining destinations: the dispatcher wakes drains; a drain claims due prospects, takes
permits, sends one PATCH per prospect and settles each outcome."""
