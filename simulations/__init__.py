"""rmmfed.simulations"""
