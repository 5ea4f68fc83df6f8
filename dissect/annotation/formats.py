"""The annotation services dissect writes to and reads from (light: the CLI lists them)."""

#: ``dissect export --format``.
EXPORT_FORMATS = ("mturk", "labelstudio", "html")
#: ``dissect import --format``.
IMPORT_FORMATS = ("auto", "mturk", "labelstudio", "csv")
