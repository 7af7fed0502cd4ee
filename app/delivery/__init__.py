"""Draining destinations: the dispatcher wakes drains; a drain claims due prospects and
routes them to two senders — bulk for groups of identical changes, then one PATCH per
prospect for the rest — and each outcome is settled."""
