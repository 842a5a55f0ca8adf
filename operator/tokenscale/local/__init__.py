"""tokenscale.local"""
