"""rmmfed.server"""
