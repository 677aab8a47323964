"""Report stage: report.md / report.html from a build folder's report.json, and build comparisons."""
