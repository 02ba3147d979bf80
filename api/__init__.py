"""pgclip's HTTP API and web page (Litestar)."""
