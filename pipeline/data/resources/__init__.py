"""Real source files copied into the package for the cohort builders; see ``PROVENANCE.md`` here."""
