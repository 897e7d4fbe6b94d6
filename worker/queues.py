"""Queue and task names: the stable contract between the scheduler, workers and other apps."""

from __future__ import annotations

# Ad-hoc (transactional) messages go through their own queue so campaigns never delay them.
QUEUE_ADHOC = "buttoncast.adhoc"
QUEUE_CAMPAIGN = "buttoncast.campaign"
QUEUE_CONTROL = "buttoncast.control"   # dispatch and sweep ticks: never stuck behind sends
QUEUE_HOOKS = "buttoncast.hooks"       # outbound hook deliveries: a slow receiver never delays a send
ALL_QUEUES = (QUEUE_ADHOC, QUEUE_CAMPAIGN, QUEUE_CONTROL, QUEUE_HOOKS)

TASK_SEND = "buttoncast.send_message"
TASK_ENQUEUE = "buttoncast.enqueue_message"
TASK_DISPATCH = "buttoncast.dispatch"
TASK_SWEEP = "buttoncast.sweep"
TASK_DELIVER_HOOKS = "buttoncast.deliver_hooks"
TASK_PRUNE = "buttoncast.prune"   # retention (issue 12 item 15)
