"""Datasets (CSV), video IO, transforms."""
