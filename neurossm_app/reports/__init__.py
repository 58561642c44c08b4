"""Self-contained HTML reports (figures embedded as SVG) for participant and group runs."""
