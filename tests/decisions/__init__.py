"""Deciding: eligibility, arbitration, explain."""
