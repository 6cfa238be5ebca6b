"""The archive served to people and assistants, read-only: `gdr mcp` (an MCP server) and `gdr web` (a search page
that plays the cited moment). Both read through archive.py as the reader role; neither imports ingest or Prefect."""
