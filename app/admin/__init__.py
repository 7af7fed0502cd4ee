"""Changing the service at run time: destinations one at a time, producer keys."""
