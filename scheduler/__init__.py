"""buttoncast scheduler side: campaigns, CSV import, the dispatcher and the recovery sweep."""
