"""Figures (matplotlib, Agg backend) from the tidy tables a run writes."""
