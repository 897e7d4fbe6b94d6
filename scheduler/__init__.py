"""Campaigns over time: create, schedule, pause, resume, cancel; CSV import and templates; the
dispatcher and the recovery sweep; retry; reports and snapshots; retention; the beat tasks.

Layer: below the faces and the CLI, above the core (`worker.sending`, `worker.contacts`,
`worker.webhooks`, `worker.hooks`, `worker.access`) and the plumbing, which it may import. Status
changes go through `worker.lifecycle`; operator actions (`schedule_campaign`, `pause_campaign`, ...)
take the Runtime and own their transaction (see `worker`'s docstring).
"""
