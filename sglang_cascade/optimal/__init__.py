"""optimal"""
