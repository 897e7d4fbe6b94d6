"""scheduler/: campaigns, import, the dispatcher, the sweep, retry, snapshots, retention."""
