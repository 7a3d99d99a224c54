"""Local fake servers for cloud APIs (tests only)."""
