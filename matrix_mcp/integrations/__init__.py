"""Events out: webhook subscriptions, the dispatcher, Standard Webhooks signing, Slack, Jira and GitHub sinks.

Nothing here is imported by a stdio server that has no subscription: `server.py` checks
`store.hooks.any_active()` and imports `dispatcher` (httpx2, cryptography) only when there is work.
"""
