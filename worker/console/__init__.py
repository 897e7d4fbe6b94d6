"""The web console: server-rendered pages for marketing teams, on the same services as the CLI and API.

People (users.py), their login sessions (sessions.py) and the CSRF token of every form (csrf.py);
one routes module per page; templates/ and static/ are inside the package (no CDN, no build step).
"""
