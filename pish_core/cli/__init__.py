"""The ``pish`` command line: thin click commands that parse, build a spec, call the core and print."""
