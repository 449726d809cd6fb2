"""The study's levers between sampling and the update: grading and scoring, the relative length reward,
offline sample injection and the sample regimes."""
