"""GET /api/v1/openapi.json: placeholder replaced below."""
