"""HTTP: iPXE scripts, iPXE binaries, installer assets, /healthcheck and /metrics.

:mod:`smee.http.app` holds the Klein routes, :mod:`smee.http.xff` the
X-Forwarded-For rule, :mod:`smee.http.service` the twistd service.
"""
