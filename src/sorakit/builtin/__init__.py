"""sorakit's built-in model: its training recipe (recipe.py) and shipped weights (model/)."""
