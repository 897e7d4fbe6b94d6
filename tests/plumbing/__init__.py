"""The plumbing and the vendor contract's values: settings, signing, phones, messages, metrics, beat lock, watchdog, supervisor."""
