"""Email providers behind one protocol: see `base.py`. `get_provider` picks the configured one."""
