"""What a run reports: stage lines, the papers' figures, the HTML report, the methods comparison table."""
