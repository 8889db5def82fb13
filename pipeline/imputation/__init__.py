"""Imputation: recover missing clinical values and missing image tokens before selection."""
