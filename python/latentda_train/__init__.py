"""latentda-train: reference data pipeline and bundle export for latentda."""
__version__ = "0.1.0"
