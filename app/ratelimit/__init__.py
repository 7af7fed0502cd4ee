"""The quota gate: one Outreach request budget per user, shared by every worker through Redis."""
