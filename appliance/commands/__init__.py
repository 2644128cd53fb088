"""Subcommand groups of the `appliance` CLI, one module per capability."""
