"""The send path (worker/sending/): claim, pace, sign and POST, record; the client; the journal."""
