"""worker/console/: the web console, in a real browser where it has pages."""
