"""One module per artefact: read, write and validate it."""
