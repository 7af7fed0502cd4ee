"""``outreach-sync``: the command line for producers and operators, and the demo (``make run``)."""
