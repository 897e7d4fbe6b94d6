"""Who may act, and as whom: API keys, console people, their sessions and roles.

- models.py    api_keys, api_idempotency, console_users, console_sessions (hashes only, never a secret)
- keys.py      API keys: create (shown once), authenticate, revoke
- users.py     console people: passwords (argon2id), lockout, roles
- sessions.py  console login sessions (only a hash of each token)
- roles.py     the roles and what each may do

Both faces (`worker.api`, `worker.console`) and the CLI authorise through here; that is why it sits
below them, in the core. May import the plumbing only.
"""
