"""Every backend behind the one runner interface (export.runner), their registry, and the graphs they run."""
