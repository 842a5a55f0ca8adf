"""`tokenscale calibrate`: measure what one replica serves within a latency target.

- `search`  (pure): per-request samples -> a measured point; which rate to measure next; the
  chosen point, the knee and the suggested autoscaling targets.
- `fit`     (pure): a simulator replica profile fitted from the measured points.
- `client`  (I/O): the open-loop load client on aiohttp, and the server's gauges.
- `report`  (I/O): the table, the JSON and the plot.

The operator never imports this package.
"""
