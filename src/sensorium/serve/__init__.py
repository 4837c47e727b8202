"""``sensorium serve``: an HTTP API and a web page hosting many adapters over shared frozen models.

``app`` holds the API (``create_app``, ``serve``, ``running_server``), ``adapters`` the shared-model
registry, ``chat`` the OpenAI chat API over the same request path, ``batching`` the model thread,
``media`` the upload readers, ``settings`` the limits.
"""
