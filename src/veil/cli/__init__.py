"""The ``veil`` command line: one module per command group. Nothing else imports this package."""
