"""Shared between the workstation and the device: preprocessing, catalogues,
the bundle format. Nothing here imports torch except ``models.network``."""
