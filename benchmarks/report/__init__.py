"""The report: its schema (written and read by one code), the summary, report.md, report.csv, the plots, --compare."""
