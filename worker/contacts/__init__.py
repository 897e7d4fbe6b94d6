"""Contacts: consent (opt-in, opt-out, their history), the 24-hour window, the frequency cap's counts.

- service.py   the contact rows and every change to them (what the CLI, the API and the console call)
- importer.py  importing a suppression list (`buttoncast contacts import --optouts`)
- attributes.py  what a marketer knows of each contact (attributes, tags): the CSV import
  (`contacts import --attributes`, a campaign's columns), one contact's edit, the batch readers

Layer: the core. May import the plumbing, `worker.ratelimit` and the other core packages.
"""
