"""Designs the farm is measured against, written from their descriptions."""
