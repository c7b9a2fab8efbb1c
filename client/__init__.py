"""rmmfed.client"""
