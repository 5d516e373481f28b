"""Recipes: what is trained (model, data, loss, evaluation) for each task."""
