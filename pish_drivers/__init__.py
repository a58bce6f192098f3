"""The built-in pish drivers, one module per driver, found through entry points."""
