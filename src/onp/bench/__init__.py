"""The benchmark (every defense against every attack) and its report: tables and plots."""
