"""What Hydra's launcher and sweeper processes import: config checks, job names, job files, resume, the sweep's
summary, device placement, console filters, errors. Never imports torch or `training` (tests/test_launchers.py
imports each module in a fresh interpreter to hold it so): the launcher leaves torch to the jobs.
"""
