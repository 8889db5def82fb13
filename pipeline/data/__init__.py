"""Data: cohort manifests and schemas, DICOM/NIfTI reading, MONAI transforms, missingness, real cohorts.

This layer imports nothing from the layers above it (networks, selection, training).
"""
