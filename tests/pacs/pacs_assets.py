"""Facts the PACS tests share (no test logic here)."""

#: The protected Orthanc's one account.
USER, PASSWORD = "radiologist", "correct horse battery"
#: Orthanc's Lua filter refuses SRs into studies with this description (a real STOW-RS rejection).
READ_ONLY_DESCRIPTION = "Archived read-only study"
