"""Everything about talking to a board: profiles and budgets (will a model fit), the serial
link, what `flash` deploys, and virtual boards to run all of it without hardware."""
