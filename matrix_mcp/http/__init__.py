"""The HTTP service: authentication (API keys, JWT) and scopes, limits, health, metrics, app assembly.

Nothing here is imported by a stdio server: `matrix-mcp serve --transport streamable-http` imports
`matrix_mcp.http.app`, which imports the rest.
"""
