"""The database: schema, engines and connections, the embedded server, and the SQL pgclip sends."""
