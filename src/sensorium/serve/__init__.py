"""``sensorium serve``: an HTTP API and a web page hosting many adapters over shared frozen models.

``app`` holds the API (``create_app``, ``serve``, ``running_server``), ``adapters`` the shared-model
registry, ``batching`` the model thread, ``media`` the upload readers, ``settings`` the limits.
"""
