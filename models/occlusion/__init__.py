"""Occlusion pattern and occlusion-robust face embedding (seed 001, FROM-like)."""
