"""The Outreach adapter: the API client, request bodies, what an answer means (errors and
rate-limit signals), and the writable prospect fields."""
