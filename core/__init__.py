"""rmmfed.core"""
