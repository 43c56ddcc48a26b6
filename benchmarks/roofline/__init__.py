"""The machine's measured ceilings, the model's bytes and stages, and where each row sits against them."""
