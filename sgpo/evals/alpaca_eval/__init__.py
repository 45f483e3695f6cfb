"""AlpacaEval 2.0: win rate, length-controlled win rate, the leaderboard report."""
