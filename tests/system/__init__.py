"""Whole processes together (worker, beat, broker, database): crashes, outages, broker loss, end to end."""
