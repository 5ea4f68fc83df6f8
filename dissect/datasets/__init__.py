"""Datasets with dense concept masks: the synthetic scene world and Broden directories."""
