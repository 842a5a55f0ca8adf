"""tokenscale.policy"""
