"""The HTTP app (aiohttp.web): producers' routes, admin routes, OAuth pages, status page,
OpenAPI and Prometheus."""
