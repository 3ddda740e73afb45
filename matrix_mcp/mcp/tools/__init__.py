"""The tools of the Matrix server, one module per noun; each module ends with its `SPECS`."""
