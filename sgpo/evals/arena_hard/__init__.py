"""Arena-Hard v0.1: verdict parsing, battles, Bradley-Terry scores and bootstrap CIs."""
