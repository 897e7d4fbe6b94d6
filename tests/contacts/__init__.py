"""worker/contacts/: consent, the window, the frequency cap."""
