"""Hostile inputs: each test builds a file an attacker (or an unlucky user) could hand dissect."""
