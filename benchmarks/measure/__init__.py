"""The timing loop, its statistics and intervals, and what the machine was doing meanwhile."""
