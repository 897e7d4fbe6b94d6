"""Who may do what in the console: three roles, each a superset of the one below.

viewer: look and download. marketer: also create, schedule, pause, resume, cancel, test, retry.
admin: also people, API keys, contacts and opt-outs. The server checks these on every request;
the templates only hide what a role cannot use.
"""

from __future__ import annotations

import enum


class Permission(str, enum.Enum):
    VIEW = "view"          # every page, reports and exports
    SEND = "send"          # create/schedule/pause/resume/cancel/test/retry
    ADMIN = "admin"        # people, API keys, contacts, opt-outs


class Role(str, enum.Enum):
    VIEWER = "viewer"
    MARKETER = "marketer"
    ADMIN = "admin"

    def allows(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self]


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW}),
    Role.MARKETER: frozenset({Permission.VIEW, Permission.SEND}),
    Role.ADMIN: frozenset({Permission.VIEW, Permission.SEND, Permission.ADMIN}),
}
