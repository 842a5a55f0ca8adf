"""tokenscale.metrics"""
