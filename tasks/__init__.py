"""Prefect tasks: one unit of work each, composed by the flows in flows/."""
