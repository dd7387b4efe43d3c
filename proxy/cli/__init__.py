"""The ``authproxy`` command line."""
