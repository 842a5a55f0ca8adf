"""tokenscale.engines"""
