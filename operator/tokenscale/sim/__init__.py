"""tokenscale.sim"""
